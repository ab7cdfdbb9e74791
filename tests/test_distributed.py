"""`torchrun --nproc-per-node 2 shedder-ov prune RECIPE` (gloo, CPU) gives the single-process
result: the same removal order, the same logged PPLs, rank 0 alone writing; ranks that hold
different inputs stop with one line. `python -m torch.distributed.run ... tests/test_distributed.py
R0 [R1]` runs rank r on recipe R_r (the last one for the rest)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def write_recipe(folder: Path, name: str, model: Path, text: Path, **search) -> Path:
    recipe = {
        "model": str(model),
        "calibration": {"path": str(text), "num_samples": 8, "seq_len": 64, "batch_size": 4},
        "search": {"targets": ["mamba_block", "ssm"], "stop": {"num_components": 3}, **search},
        "device": "cpu",
        "output": str(folder / name),
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def torchrun(*recipes: Path, cli: bool = False) -> subprocess.CompletedProcess:
    """Two ranks: `shedder-ov prune RECIPE` as a user runs it, or this file's worker (one recipe per rank)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    program = ["--no-python", str(Path(sys.executable).with_name("shedder-ov")), "prune"] if cli else [__file__]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *program, *map(str, recipes)]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_share_deals_prefix_costs_evenly():
    from shedder_ov.search.distributed import Ranks

    costs = [24 - layer + 1 for layer in range(24)]  # a candidate in layer i runs 24 - i layers and the head
    shares = [Ranks(torch.device("cpu"), rank=r, world=3).share(costs) for r in range(3)]
    assert sorted(i for share in shares for i in share) == list(range(24))
    assert [len(s) for s in shares] == [8, 8, 8]
    assert [sum(costs[i] for i in s) for s in shares] == [108, 108, 108]  # a split in layer order: 164, 108, 52


def stories(folder: Path, chars: int = 40_000) -> Path:
    from .conftest import TRAIN_TEXT

    path = folder / f"stories-{chars}.txt"
    path.write_text(TRAIN_TEXT.read_text()[:chars])
    return path


def test_two_gloo_ranks_equal_one_process(tmp_path, tiny_checkpoint):
    from shedder_ov.pipeline import run_prune
    from shedder_ov.recipe import load_recipe
    from shedder_ov.search import SearchLog

    model, text = tiny_checkpoint("mamba2"), stories(tmp_path)
    single = run_prune(load_recipe(write_recipe(tmp_path, "single", model, text)))
    run = torchrun(write_recipe(tmp_path, "ranks", model, text), cli=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 ranks (gloo)" in run.stderr and run.stderr.count("search memory:") == 1  # rank 0 alone speaks
    ranked = json.loads((tmp_path / "ranks" / "search" / "result.json").read_text())
    assert ranked["search"]["ranks"] == 2 and single["search"]["ranks"] == 1
    assert [r["candidate"] for r in ranked["removed"]] == [r["candidate"] for r in single["removed"]]
    assert math.isclose(ranked["ppl_original"], single["ppl_original"], rel_tol=1e-6)
    one, two = (SearchLog(tmp_path / name / "search" / "log.jsonl").evaluations() for name in ("single", "ranks"))
    assert one.keys() == two.keys() and len(one) > 1 + 8 + 6, sorted(set(one) ^ set(two))
    assert all(math.isclose(one[key], two[key], rel_tol=1e-6) for key in one), "logged PPLs differ"
    assert (tmp_path / "ranks" / "pruned" / "config.json").is_file()


def test_ranks_with_other_calibration_data_stop_with_one_line(tmp_path, tiny_checkpoint):
    model = tiny_checkpoint("mamba2")
    run = torchrun(write_recipe(tmp_path, "a", model, stories(tmp_path)), write_recipe(tmp_path, "b", model, stories(tmp_path, 30_000)))
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert errors and set(errors) == {
        "error: calibration.path: torchrun rank 1 holds other calibration windows than rank 0; "
        "every rank must read the same model, data and recipe"
    }
    assert not (tmp_path / "a" / "search" / "log.jsonl").exists()


if __name__ == "__main__":  # one torchrun worker; prune never exports: skip importing OpenVINO / optimum (8 s)
    import types

    sys.modules["shedder_ov.export"] = types.ModuleType("shedder_ov.export")
    from shedder_ov.cli import one_line_errors
    from shedder_ov.pipeline import run_prune
    from shedder_ov.recipe import load_recipe

    torch.set_num_threads(1)
    recipe = sys.argv[1:][min(int(os.environ["RANK"]), len(sys.argv) - 2)]
    one_line_errors(lambda: run_prune(load_recipe(recipe)))()
