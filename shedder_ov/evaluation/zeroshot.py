"""Zero-shot accuracy through lm-evaluation-harness, offline, on the local task files.

Task definitions are lm-eval YAMLs shipped in tasks/ (prompts as in lm-eval's own tasks),
pointed at the data root's eval/ folder; the model is our LM wrapper over the same "logits for a
batch of windows" interface as PPL, so torch checkpoints and IRs are scored identically."""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
from pathlib import Path
from typing import get_args

import torch
import torch.nn.functional as F
import yaml

from ..errors import ShedderError
from ..io import atomic_dir
from ..recipe import ZeroShotTask
from .runtime import LogitsModel

TASKS_DIR = Path(__file__).parent / "tasks"
PAPER_TASKS = get_args(ZeroShotTask)
UNAVAILABLE = {"hellaswag": "HellaSwag validation data is not available locally (see shared/data/README.md, Missing)"}
# The Mamba-Shedder reference eval.py reports acc for arc_easy and acc_norm wherever a task has it.
PAPER_METRIC = {task: "acc_norm" for task in ("hellaswag", "piqa", "arc_challenge", "openbookqa")}


def paper_metric(task: str) -> str:
    return PAPER_METRIC.get(task, "acc")


def task_config(task: str, data_dir: Path) -> dict:
    """The task's YAML with its data files resolved under `data_dir` (missing file → ShedderError)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    if task in UNAVAILABLE:
        raise ShedderError(f"task {task}: {UNAVAILABLE[task]}")
    path = TASKS_DIR / f"{task}.yaml"
    if not path.is_file():
        raise ShedderError(f"task {task}: unknown (available: {', '.join(available_tasks())})")
    config = load_yaml(path)
    files = {split: Path(data_dir) / name for split, name in config["dataset_kwargs"]["data_files"].items()}
    labels = config.pop("labels_file", None)
    for file in [*files.values(), *([Path(data_dir) / labels] if labels else [])]:
        if not file.is_file():
            raise ShedderError(f"task {task}: data file {file} not found (set eval.data_root in the recipe, or --data-root)")
    config["dataset_kwargs"] = {"data_files": {split: str(f) for split, f in files.items()}}
    if labels:
        values = [int(line) for line in (Path(data_dir) / labels).read_text().split()]
        config["process_docs"] = lambda dataset: dataset.add_column("label", values)
    return config


class _Function(str):
    """An lm-eval `!function module.name` reference, kept as written through load and dump."""


class _TaskLoader(yaml.SafeLoader):
    pass


class _TaskDumper(yaml.SafeDumper):
    pass


_TaskLoader.add_constructor("!function", lambda loader, node: _Function(loader.construct_scalar(node)))
_TaskDumper.add_representer(_Function, lambda dumper, value: dumper.represent_scalar("!function", str(value)))


def write_lm_eval_tasks(out_dir: Path, data_dir: Path, tasks: list[str]) -> list[str]:
    """A folder for lm-eval's own CLI (`lm_eval --include_path OUT_DIR --tasks ...`): the shipped
    task YAMLs with their data files at absolute paths under `data_dir`, tasks whose labels live in
    a separate file given a jsonl copy with the labels merged, and docs.py alongside. Include-path
    tasks take precedence over lm-eval's own of the same name. Returns the tasks written."""
    out_dir, data_dir = Path(out_dir).resolve(), Path(data_dir).resolve()
    for task in tasks:
        task_config(task, data_dir)  # unknown / unavailable task or a missing file: one line, before writing
    with atomic_dir(out_dir) as tmp:
        shutil.copy(TASKS_DIR / "docs.py", tmp / "docs.py")
        for task in tasks:
            config = yaml.load((TASKS_DIR / f"{task}.yaml").read_text(), Loader=_TaskLoader)
            files = config["dataset_kwargs"]["data_files"]
            labels = config.pop("labels_file", None)
            if labels:
                (split, name), = files.items()
                values = [int(line) for line in (data_dir / labels).read_text().split()]
                docs = [json.loads(line) for line in (data_dir / name).read_text().splitlines() if line.strip()]
                (tmp / f"{task}.jsonl").write_text("".join(json.dumps(doc | {"label": label}) + "\n" for doc, label in zip(docs, values)))
                files = {split: str(out_dir / f"{task}.jsonl")}
            else:
                files = {split: str(data_dir / name) for split, name in files.items()}
            config["dataset_kwargs"]["data_files"] = files
            (tmp / f"{task}.yaml").write_text(yaml.dump(config, Dumper=_TaskDumper, sort_keys=False))
    return tasks


def available_tasks() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def make_lm(model: LogitsModel, batch_size: int = 8, max_length: int = 2048):
    """An lm_eval LM over a LogitsModel (loglikelihood only; these tasks need nothing else)."""
    from lm_eval.api.model import LM

    tokenizer = model.tokenizer
    eos = tokenizer.eos_token_id

    def encode_pair(context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip())  # as lm-eval's HFLM: trailing spaces go to the continuation
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
        head = tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
        return ([eos] if not head else head), whole[len(head):]

    class ShedderLM(LM):
        def loglikelihood(self, requests):
            pairs = [encode_pair(*r.args) for r in requests]
            order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
            results: list = [None] * len(pairs)
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                seqs = [(pairs[i][0] + pairs[i][1])[-(max_length + 1):][:-1] for i in chunk]
                width = max(map(len, seqs))
                ids = torch.full((len(seqs), width), eos, dtype=torch.long)
                for row, seq in enumerate(seqs):
                    ids[row, : len(seq)] = torch.tensor(seq)  # right padding: causal, never read
                logprobs = F.log_softmax(model.logits(ids).float(), dim=-1)
                for row, i in enumerate(chunk):
                    target = torch.tensor(pairs[i][1])
                    end = len(seqs[row])
                    scores = logprobs[row, end - len(target) : end]
                    results[i] = (
                        scores.gather(-1, target[:, None]).sum().item(),
                        bool((scores.argmax(-1) == target).all()),
                    )
            return results

        def loglikelihood_rolling(self, requests):
            raise ShedderError("loglikelihood_rolling is not needed by the zero-shot tasks (use `shedder-ov eval --ppl`)")

        def generate_until(self, requests):
            raise ShedderError("generation tasks are not supported by this evaluator")

    return ShedderLM()


def chance_level(task, limit: int | None) -> float:
    """Accuracy of a uniform guess over the items scored (0 where a task has no choices to guess
    among, e.g. LAMBADA's next word): an accuracy near it carries no signal."""
    if task.OUTPUT_TYPE != "multiple_choice":
        return 0.0
    docs = list(task.eval_docs)[:limit] if limit else list(task.eval_docs)
    return statistics.mean(1 / len(task.doc_to_choice(doc)) for doc in docs)


def with_noise(report: dict) -> dict:
    """The average of the paper metrics with its binomial standard error and chance level: two
    variants whose averages differ by less than ~2 standard errors are not told apart."""
    scored = [r for r in report.values() if r.get("value") is not None]
    if not scored:
        return {"average": None}
    for entry in scored:
        entry["stderr"] = math.sqrt(entry["value"] * (1 - entry["value"]) / max(entry["n"], 1))
    count = len(scored)
    average = sum(r["value"] for r in scored) / count
    stderr = math.sqrt(sum(r["stderr"] ** 2 for r in scored)) / count
    chance = sum(r["chance"] for r in scored) / count
    return {"average": average, "average_stderr": stderr, "average_chance": chance,
            "at_chance": average - chance < 2 * stderr}


def evaluate_zeroshot(
    model: LogitsModel, tasks: list[str], data_dir: Path, limit: int | None = None, batch_size: int = 8
) -> dict:
    """{task: {acc, acc_norm, metric, value, n, chance, stderr} | {skipped}} and the average of the
    paper metrics with its noise (`with_noise`)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval import evaluator
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks import TaskManager

    report: dict = {}
    runnable = []
    for task in tasks:
        if task in UNAVAILABLE:
            report[task] = {"skipped": UNAVAILABLE[task]}
        else:
            runnable.append(ConfigurableTask(config=task_config(task, data_dir)))
    if runnable:
        output = evaluator.simple_evaluate(
            model=make_lm(model, batch_size), tasks=runnable, limit=limit, log_samples=False, bootstrap_iters=0,
            verbosity="WARNING",
            task_manager=TaskManager(include_defaults=False),  # tasks are built: skip indexing lm-eval's ~56k YAMLs (14 s)
        )
        by_name = {task.config.task: task for task in runnable}
        for task, values in output["results"].items():
            entry = {k.split(",")[0]: v for k, v in values.items() if k.endswith(",none") and "stderr" not in k}
            entry["metric"] = paper_metric(task)
            entry["value"] = entry.get(entry["metric"])
            entry["n"] = output["n-samples"][task]["effective"]
            entry["chance"] = chance_level(by_name[task], limit)
            report[task] = entry
    return {"tasks": report, **with_noise(report), "limit": limit}
