"""The bad-input corpus: for every command, inputs a user gets wrong and the one line each must
give (exit status 2, nothing written). A new check adds its row here.

Each row builds its bad input from a good one in tmp_path: `make(case)` edits the case and
returns the command line; `{tmp}` in a message is tmp_path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from shedder_ov.adapters import supported_model_types
from shedder_ov.cli import app

from .conftest import EVAL_TEXT, TRAIN_TEXT, require

runner = CliRunner()


class Case:
    """A good tiny input set in tmp_path that a row spoils: a mamba2 checkpoint, a recipe, an IR."""

    def __init__(self, tmp: Path, checkpoint: Path):
        self.tmp, self.checkpoint, self.out = tmp, checkpoint, tmp / "out"
        self.recipe_fields = {
            "model": str(checkpoint),
            "calibration": {"path": str(require(TRAIN_TEXT)), "num_samples": 2, "seq_len": 16, "batch_size": 2},
            "search": {"targets": ["mamba_block"], "stop": {"num_components": 1}},
            "output": str(self.out),
        }

    def recipe(self, **fields) -> str:
        path = self.tmp / "recipe.yaml"
        path.write_text(yaml.safe_dump({**self.recipe_fields, **fields}))
        return str(path)

    def file(self, name: str, content: bytes | str) -> str:
        path = self.tmp / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return str(path)

    def config(self, **changes) -> None:
        path = self.checkpoint / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

    def truncate(self, name: str = "model.safetensors", keep: int = -1) -> None:
        path = self.checkpoint / name
        data = path.read_bytes()
        path.write_bytes(data[:keep])

    def as_bin(self) -> None:
        """The checkpoint's weights as pytorch_model.bin (the older format transformers still loads)."""
        import torch
        from safetensors.torch import load_file

        torch.save(load_file(self.checkpoint / "model.safetensors"), self.checkpoint / "pytorch_model.bin")
        (self.checkpoint / "model.safetensors").unlink()

    def recovery(self, **fields) -> dict:
        return {"data": {"path": str(require(TRAIN_TEXT))}, "held_out": {"path": str(require(EVAL_TEXT))}, **fields}

    def pruned(self) -> Path:
        """The output dir as `prune` leaves it (any checkpoint serves as the pruned one)."""
        shutil.copytree(self.checkpoint, self.out / "pruned")
        self.checkpoint = self.out / "pruned"
        return self.checkpoint

    def ir(self, name: str = "ir", **config) -> Path:
        """A small valid IR (one MatMul) with a config.json, for the IR consumers' checks."""
        import openvino as ov
        from openvino import opset13 as ops

        ids = ops.parameter([-1, -1], ov.Type.i64, name="input_ids")
        embed = ops.gather(ops.constant(np.ones((8192, 64), np.float32)), ids, 0)
        logits = ops.matmul(embed, ops.constant(np.ones((64, 8192), np.float32)), False, False)
        folder = self.tmp / name
        folder.mkdir()
        ov.save_model(ov.Model([logits], [ids]), folder / "openvino_model.xml")
        (folder / "config.json").write_text(json.dumps({"hidden_size": 64, "vocab_size": 8192, **config}))
        return folder

    def broken_ir(self, part: str) -> str:
        folder = self.ir("broken")
        path = folder / f"openvino_model.{part}"
        path.write_bytes(path.read_bytes()[:500])
        return str(folder)


@pytest.fixture
def case(tmp_path, tiny_checkpoint):
    return Case(tmp_path, tiny_checkpoint("mamba2"))


def assert_refused(case: Case, args: list[str], message: str) -> None:
    """Exit status 2, exactly this one line on stderr, and no file written anywhere in tmp_path."""
    before = sorted(case.tmp.rglob("*"))
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == "error: " + message.format(tmp=case.tmp)
    assert sorted(case.tmp.rglob("*")) == before, "a refused command wrote files"


CKPT = "{tmp}/tiny-mamba2"
HIDDEN = "the input width of the in-projections int4 compresses"
SHAPES = f"{CKPT}: config.json does not match the weights: backbone.embeddings.weight is [8192, 64] in the weights, [9000, 64] by the config"
RECIPE_ROWS = {  # prune, and every recipe-driven command: the whole recipe against the model
    "export.group_size": (
        lambda c: c.recipe(export={"variants": ["int4"], "group_size": 100}),
        f"export.group_size: 100 does not divide the hidden size 64 ({HIDDEN}); use a divisor of 64, or -1 (per-channel)",
    ),
    "export.ratio without int4": (
        lambda c: c.recipe(export={"variants": ["fp32", "int8"], "ratio": 0.5}),
        "export.ratio: applies to the int4 variant, which export.variants lacks",
    ),
    "lora target": (
        lambda c: c.recipe(recovery=c.recovery(lora={"target_modules": ["in_proj", "up_proj"]})),
        "recovery.lora.target_modules: up_proj not in a mamba2 model (valid: in_proj, out_proj)",
    ),
    "recovery data missing": (
        lambda c: c.recipe(recovery={"data": {"path": str(c.tmp / "none.txt")}}),
        "recovery.data.path: {tmp}/none.txt not found",
    ),
    "held-out not UTF-8": (
        lambda c: c.recipe(recovery=c.recovery(held_out={"path": c.file("latin1.txt", "caf\xe9".encode("latin-1"))})),
        "{tmp}/latin1.txt: not UTF-8 text (byte 0xe9 at offset 3)",
    ),
    "recovery.device cuda": (
        lambda c: c.recipe(recovery=c.recovery(device="cuda")),
        "recovery.device: cuda requested but no CUDA device is available (use auto or cpu)",
    ),
    "device cuda": (lambda c: c.recipe(device="cuda"), "device: cuda requested but no CUDA device is available (use auto or cpu)"),
    "strict without parity": (
        lambda c: c.recipe(export={"strict": True, "parity": False}),
        "{tmp}/recipe.yaml: export: strict: true needs parity: true (strict fails the export on a parity mismatch)",
    ),
    "dtype": (lambda c: c.recipe(dtype="float8"), "{tmp}/recipe.yaml: dtype: Input should be 'float32', 'bfloat16' or 'float16' (got 'float8')"),
    "eval data": (
        lambda c: c.recipe(eval={"data_root": str(c.tmp / "nodata"), "datasets": ["tinystories"], "tasks": []}),
        "eval.data_root: {tmp}/nodata/tinystories/eval.txt (held-out text for tinystories) not found",
    ),
    "bench length 0": (lambda c: c.recipe(eval={"bench": {"lengths": [0]}}), "{tmp}/recipe.yaml: eval.bench.lengths.0: Input should be greater than 0"),
    "bench length above the limit": (
        lambda c: c.recipe(eval={"bench": {"lengths": [128, 4096]}}),
        "eval.bench.lengths: 4096 is above the model's limit of 2048 tokens",
    ),
    "llama.cpp build missing": (
        lambda c: c.recipe(eval={"bench": {"llama_cpp": str(c.tmp / "nollama")}}),
        "eval.bench.llama_cpp: llama.cpp: {tmp}/nollama/build/bin/llama-bench not found (build it: python "
        "scripts/bench_vs_llamacpp.py --build-only --llama-cpp {tmp}/nollama)",
    ),
    "search target": (
        lambda c: c.recipe(search={"targets": ["mlp"], "stop": {"num_components": 1}}),
        "search.targets: mlp not in a mamba2 model (it has: layer, mamba_block, ssm, ssm_heads)",
    ),
    "truncated safetensors": (
        lambda c: c.truncate() or c.recipe(),
        f"{CKPT}/model.safetensors: truncated or corrupt safetensors file (Error while deserializing header: "
        "incomplete metadata, file not fully covered)",
    ),
    "safetensors header cut": (
        lambda c: c.truncate(keep=1000) or c.recipe(),
        f"{CKPT}/model.safetensors: truncated or corrupt safetensors file (Error while deserializing header: invalid header length)",
    ),
    "truncated pytorch_model.bin": (
        lambda c: c.as_bin() or c.truncate("pytorch_model.bin", 100_000) or c.recipe(),
        f"{CKPT}/pytorch_model.bin: truncated or corrupt PyTorch weights file (PytorchStreamReader failed reading zip "
        "archive: failed finding central directory)",
    ),
    "pytorch_model.bin vs config": (
        lambda c: c.as_bin() or c.config(vocab_size=9000) or c.recipe(),
        SHAPES,
    ),
    "index names a missing shard": (
        lambda c: c.file("tiny-mamba2/model.safetensors.index.json", json.dumps({"weight_map": {"x": "model-2.safetensors"}}))
        and c.recipe(),
        f"{CKPT}/model.safetensors.index.json: names model-2.safetensors, which is missing from the folder",
    ),
    "config vs weights shape": (lambda c: c.config(vocab_size=9000) or c.recipe(), SHAPES),
    "config needs a missing layer": (
        lambda c: c.config(num_hidden_layers=5) or c.recipe(),
        f"{CKPT}: config.json needs weight backbone.layers.4.norm.weight [64], which the weights lack",
    ),
    "weights hold an extra layer": (
        lambda c: c.config(num_hidden_layers=3) or c.recipe(),
        f"{CKPT}: the weights hold backbone.layers.3.mixer.A_log, which the model config.json describes has no place for",
    ),
    "config inconsistent": (
        lambda c: c.config(hidden_size=96) or c.recipe(),
        f"{CKPT}/config.json: not a valid mamba2 config (ValueError: Inconsistent configuration: hidden_size * expand "
        "(192) must equal num_heads * head_dim (128).)",
    ),
    "config not JSON": (
        lambda c: c.file("tiny-mamba2/config.json", "{") and c.recipe(),
        f"{CKPT}/config.json: not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))",
    ),
    "tokenizer broken": (
        lambda c: c.file("tiny-mamba2/tokenizer.json", '{"version": ') and c.recipe(),
        f"{CKPT}: the tokenizer does not load (Expecting value: line 1 column 13 (char 12))",
    ),
    "calibration not UTF-8": (
        lambda c: c.recipe(calibration={"path": c.file("bad.txt", b"\xff\xfe story")}),
        "{tmp}/bad.txt: not UTF-8 text (byte 0xff at offset 0)",
    ),
    "calibration binary": (
        lambda c: c.recipe(calibration={"path": c.file("bin.txt", b"PK\x03\x04\x00\x00")}),
        "{tmp}/bin.txt: binary file (NUL byte at offset 4), not text",
    ),
    "calibration empty": (lambda c: c.recipe(calibration={"path": c.file("empty.txt", " \n")}), "{tmp}/empty.txt: no text found"),
    "calibration jsonl": (
        lambda c: c.recipe(calibration={"path": c.file("c.jsonl", '{"text": "a"}\n{"text": \n')}),
        "{tmp}/c.jsonl:2: not a JSON line",
    ),
    "calibration jsonl record": (
        lambda c: c.recipe(calibration={"path": c.file("c.jsonl", '{"text": "a"}\n[1, 2]\n')}),
        "{tmp}/c.jsonl:2: record has no field 'text' (set text_field)",
    ),
    "calibration alpaca": (
        lambda c: c.recipe(calibration={"path": c.file("a.json", '{"instruction": "x"}')}),
        "{tmp}/a.json: Alpaca format is a JSON array of {{instruction, input, output}} records",
    ),
}


@pytest.mark.parametrize("row", list(RECIPE_ROWS))
def test_prune(case, row):
    make, message = RECIPE_ROWS[row]
    assert_refused(case, ["prune", make(case)], message)


PRUNE_AND_EXPORT_ROWS = ["export.group_size", "lora target", "eval data", "truncated safetensors", "config needs a missing layer",
                         "calibration not UTF-8", "bench length above the limit", "llama.cpp build missing"]


@pytest.mark.parametrize("row", PRUNE_AND_EXPORT_ROWS)
def test_prune_and_export(case, row):
    make, message = RECIPE_ROWS[row]
    assert_refused(case, ["prune-and-export", make(case)], message)


RECOVER_ROWS = {
    "no pruned checkpoint": (
        lambda c: c.recipe(recovery=c.recovery()),
        "output: {tmp}/out/pruned has no pruned checkpoint; run `shedder-ov prune` with this recipe first",
    ),
    "no recovery section": (
        lambda c: c.pruned() and c.recipe(),
        "recipe: no recovery section (add recovery: {{method: lora, data: {{path: ...}}}})",
    ),
    "pruned safetensors truncated": (
        lambda c: c.pruned() and c.truncate() or c.recipe(recovery=c.recovery()),
        "{tmp}/out/pruned/model.safetensors: truncated or corrupt safetensors file (Error while deserializing header: "
        "incomplete metadata, file not fully covered)",
    ),
    "lora target": (
        lambda c: c.pruned() and c.recipe(recovery=c.recovery(lora={"target_modules": ["up_proj"]})),
        "recovery.lora.target_modules: up_proj not in a mamba2 model (valid: in_proj, out_proj)",
    ),
    "data not UTF-8": (
        lambda c: c.pruned() and c.recipe(recovery=c.recovery(data={"path": c.file("bad.txt", b"ok \xc3\x28")})),
        "{tmp}/bad.txt: not UTF-8 text (byte 0xc3 at offset 3)",
    ),
    "data alpaca": (
        lambda c: c.pruned() and c.recipe(recovery=c.recovery(data={"path": c.file("a.json", "[1, 2")})),
        "{tmp}/a.json: not a JSON file (Alpaca format is a JSON array of records)",
    ),
    "device cuda": (
        lambda c: c.pruned() and c.recipe(recovery=c.recovery(device="cuda")),
        "recovery.device: cuda requested but no CUDA device is available (use auto or cpu)",
    ),
    "export.group_size": (
        lambda c: c.pruned() and c.recipe(recovery=c.recovery(), export={"variants": ["int4"], "group_size": 48}),
        f"export.group_size: 48 does not divide the hidden size 64 ({HIDDEN}); use a divisor of 64, or -1 (per-channel)",
    ),
}


@pytest.mark.parametrize("row", list(RECOVER_ROWS))
def test_recover(case, row):
    make, message = RECOVER_ROWS[row]
    assert_refused(case, ["recover", make(case)], message)


def _checkpoint(c: Case, spoil) -> str:
    spoil(c)
    return str(c.checkpoint)


CHECKPOINT_ROWS = {  # export and eval of a torch checkpoint: its files, by their headers
    "truncated safetensors": (lambda c: _checkpoint(c, Case.truncate), RECIPE_ROWS["truncated safetensors"][1]),
    "config vs weights shape": (lambda c: _checkpoint(c, lambda c: c.config(vocab_size=9000)), RECIPE_ROWS["config vs weights shape"][1]),
    "config inconsistent": (lambda c: _checkpoint(c, lambda c: c.config(hidden_size=96)), RECIPE_ROWS["config inconsistent"][1]),
    "tokenizer broken": (
        lambda c: _checkpoint(c, lambda c: c.file("tiny-mamba2/tokenizer.json", '{"version": ')),
        RECIPE_ROWS["tokenizer broken"][1],
    ),
    "unsupported": (
        lambda c: _checkpoint(c, lambda c: c.config(model_type="jamba")),
        f"{CKPT}: unsupported architecture model_type='jamba' (supported: {', '.join(supported_model_types())})",
    ),
}


@pytest.mark.parametrize("row", list(CHECKPOINT_ROWS))
def test_export(case, row):
    make, message = CHECKPOINT_ROWS[row]
    assert_refused(case, ["export", make(case), str(case.tmp / "ir-out")], message)


OV_XML = "corrupted IR (Error parsing element attribute at offset 501)"  # OpenVINO's words for the file cut at 500 bytes
OV_BIN = "corrupted IR (Incorrect weights in bin file!)"
COMPRESS_ROWS = {
    "not an IR": (lambda c: [str(c.checkpoint)], f"{CKPT}: not an OpenVINO IR folder (no openvino_model.xml + .bin)"),
    "xml cut": (lambda c: [c.broken_ir("xml")], f"{{tmp}}/broken: {OV_XML}"),
    "bin cut": (lambda c: [c.broken_ir("bin")], f"{{tmp}}/broken: {OV_BIN}"),
    "mode": (lambda c: [str(c.ir()), "--mode", "int5"], "--mode: unknown compression mode 'int5' (allowed: int8_sym, int8_asym, int4_sym, int4_asym)"),
    "group size": (
        lambda c: [str(c.ir()), "--mode", "int4_sym", "--group-size", "48"],
        "--group-size 48 does not divide the hidden size 64 (or use -1: per-channel)",
    ),
    "group size on int8": (
        lambda c: [str(c.ir()), "--group-size", "32"],
        "--group-size applies to int4 modes only (int8 is per-channel), got mode int8_asym",
    ),
    "awq without data": (lambda c: [str(c.ir()), "--mode", "int4_sym", "--awq"], "--awq / --scale-estimation need --dataset (a recipe YAML or a text file)"),
}


@pytest.mark.parametrize("row", list(COMPRESS_ROWS))
def test_compress(case, row):
    make, message = COMPRESS_ROWS[row]
    args = make(case)
    assert_refused(case, ["compress", args[0], str(case.tmp / "c-out"), *args[1:]], message)


EVAL = ["--ppl", "tinystories", "--tasks", "none", "--json", "{tmp}/e.json"]
EVAL_ROWS = {
    **{name: (lambda c, make=make: [make(c)], message) for name, (make, message) in CHECKPOINT_ROWS.items() if name != "unsupported"},
    "missing": (lambda c: [str(c.tmp / "nope")], "{tmp}/nope: not found"),
    "neither": (lambda c: [str(c.tmp)], "{tmp}: neither a checkpoint folder (config.json) nor an OpenVINO IR (openvino_model.xml)"),
    "IR xml cut": (lambda c: [c.broken_ir("xml")], f"{{tmp}}/broken/openvino_model.xml: {OV_XML}"),
    "ppl dataset": (
        lambda c: [str(c.checkpoint), "--ppl", "c4"],
        "--ppl: unknown c4 (allowed: tinystories, wikitext2, alpaca, or none)",
    ),
    "task": (
        lambda c: [str(c.checkpoint), "--tasks", "mmlu"],
        "--tasks: unknown mmlu (allowed: lambada_openai, hellaswag, piqa, arc_easy, arc_challenge, winogrande, openbookqa, or none)",
    ),
    "seq len": (lambda c: [str(c.checkpoint), "--seq-len", "0"], "--seq-len: 0 (must be at least 1)"),
    "precision": (
        lambda c: [str(c.checkpoint), "--precision", "int8"],
        "--precision: 'int8' is not a hint (f32, bf16, f16) or a prompt/decode pair of them (e.g. f32/bf16)",
    ),
}


@pytest.mark.parametrize("row", list(EVAL_ROWS))
def test_eval(case, row):
    make, message = EVAL_ROWS[row]
    args = make(case)
    assert_refused(case, ["eval", *[a.format(tmp=case.tmp) for a in EVAL], *args], message)


BENCH_ROWS = {
    "not an IR": (lambda c: [str(c.checkpoint)], f"{CKPT}: not an OpenVINO IR folder (no openvino_model.xml + .bin)"),
    "bin cut": (lambda c: [c.broken_ir("bin")], f"{{tmp}}/broken: {OV_BIN}"),
    "labels": (lambda c: [str(c.ir()), "--labels", "a,b"], "--labels: 2 labels for 1 IRs"),
    "lengths not ints": (lambda c: [str(c.ir()), "--lengths", "128,long"], "--lengths: '128,long' is not a comma-separated list of integers"),
    "length 0": (lambda c: [str(c.ir()), "--lengths", "0,16"], "--lengths: 0 (must be at least 1)"),
    "new tokens": (lambda c: [str(c.ir()), "--new-tokens", "0"], "--new-tokens: 0 (must be at least 1)"),
    "precision": (
        lambda c: [str(c.ir()), "--precision", "f32/bf16/f16"],
        "--precision: 'f32/bf16/f16' is not a hint (f32, bf16, f16) or a prompt/decode pair of them (e.g. f32/bf16)",
    ),
    "above the limit": (
        lambda c: [str(c.ir(max_position_embeddings=64)), "--lengths", "16,128"],
        "--lengths: 128 is above the model's limit of 64 tokens",
    ),
}


@pytest.mark.parametrize("row", list(BENCH_ROWS))
def test_bench(case, row):
    make, message = BENCH_ROWS[row]
    assert_refused(case, ["bench", *make(case), "--json", str(case.tmp / "b.json")], message)


REPORT_ROWS = {
    "missing": (lambda c: str(c.tmp / "nope"), "{tmp}/nope: output dir not found"),
}


@pytest.mark.parametrize("row", list(REPORT_ROWS))
def test_report(case, row):
    make, message = REPORT_ROWS[row]
    assert_refused(case, ["report", make(case)], message)


BENCH_SEARCH_ROWS = {
    "method": (lambda c: [c.recipe(), "--methods", "fast,greedy"], "--methods: greedy (allowed: fast, naive, halving, ranked, shortgpt, random, last_k)"),
    "no calibration": (
        lambda c: [c.recipe(calibration=None, search={"targets": ["ssm"], "apply": c.file("r.json", '{"pruned_ssm_idx": [1]}')})],
        "{tmp}/recipe.yaml: bench-search needs a calibration section",
    ),
    **{name: (lambda c, make=make: [make(c)], message) for name, (make, message) in RECIPE_ROWS.items()
       if name in ("truncated safetensors", "calibration not UTF-8", "device cuda")},
}


@pytest.mark.parametrize("row", list(BENCH_SEARCH_ROWS))
def test_bench_search(case, row):
    make, message = BENCH_SEARCH_ROWS[row]
    assert_refused(case, ["bench-search", *make(case)], message)
