"""Search methods on the real tiny models: exact fast == naive, approximate and baselines run
with the same rows, logs resume, kernels fall back on CPU."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import shedder_ov  # noqa: F401
from shedder_ov.adapters import adapter_for
from shedder_ov.kernels import TORCH, kernels_for
from shedder_ov.recipe import StopRule
from shedder_ov.search import GreedySearch, PerplexityScorer, SearchLog, Stage

MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"
pytestmark = pytest.mark.skipif(not (MODELS / "mamba2-tiny").is_dir(), reason="shared models not present")


@pytest.fixture(scope="module", params=["mamba2-tiny", "mamba1-tiny"])
def adapter(request):
    torch.manual_seed(0)
    return adapter_for(AutoModelForCausalLM.from_pretrained(MODELS / request.param).eval())


@pytest.fixture(scope="module")
def windows():
    return torch.randint(1, 8192, (8, 64), generator=torch.Generator().manual_seed(1))


def search(adapter, windows, tmp_path, method, targets=("mamba_block",), steps=2, log="log.jsonl", batch_size=2, **kw):
    candidates = [c for c in adapter.candidates(list(targets)) if c.layer % 8 == 1]  # layers 1, 9, 17 keep it fast
    scorer = PerplexityScorer(adapter, windows, batch_size, torch.device("cpu"), reuse_prefix=method != "naive", **kw)
    found = GreedySearch(
        adapter, scorer, [Stage(candidates, StopRule(num_components=steps))], SearchLog(tmp_path / log), show_progress=False, method=method
    ).run()
    adapter.masked.clear()
    return found


def test_fast_equals_naive(adapter, windows, tmp_path):
    naive = search(adapter, windows, tmp_path, "naive", targets=("mamba_block", "ssm"), log="naive.jsonl")
    fast = search(adapter, windows, tmp_path, "fast", targets=("mamba_block", "ssm"), log="fast.jsonl")
    assert [r["candidate"] for r in fast.removed] == [r["candidate"] for r in naive.removed]
    assert fast.ppl_original == naive.ppl_original
    for a, b in zip(fast.removed, naive.removed):
        assert math.isclose(a["ppl"], b["ppl"], rel_tol=1e-6)
    every = SearchLog(tmp_path / "naive.jsonl").evaluations()
    for key, ppl in SearchLog(tmp_path / "fast.jsonl").evaluations().items():
        assert math.isclose(ppl, every[key], rel_tol=1e-6), key


def test_fast_groups_and_cache_stride_do_not_change_scores(adapter, windows, tmp_path):
    # all candidates stacked in one group (as on a GPU), vs one per group with a residual
    # cache every few layers only
    reference = search(adapter, windows, tmp_path, "fast", log="a.jsonl", group_budget_bytes=1 << 30)
    small = search(adapter, windows, tmp_path, "fast", log="b.jsonl", group_budget_bytes=1, cache_budget_bytes=1 << 20)
    assert [r["candidate"] for r in small.removed] == [r["candidate"] for r in reference.removed]
    for a, b in zip(small.removed, reference.removed):
        assert math.isclose(a["ppl"], b["ppl"], rel_tol=1e-6)


def test_resume_redoes_nothing(adapter, windows, tmp_path):
    first = search(adapter, windows, tmp_path, "fast", steps=1)
    resumed = search(adapter, windows, tmp_path, "fast", steps=2)
    assert resumed.removed[0] == first.removed[0]
    assert resumed.evaluated_now == 2  # step 2 only: 2 remaining candidates


def test_halving_logs_rounds_and_exact_final_ppl(adapter, windows, tmp_path):
    found = search(adapter, windows, tmp_path, "halving", batch_size=1)
    records = SearchLog(tmp_path / "log.jsonl").records
    halving = [r for r in records if r["type"] == "halving"]
    assert [r["step"] for r in halving] == [1, 2]
    assert all(r["rounds"][0]["batches"] == 1 for r in halving)
    assert all(isinstance(r["differs_from_exact_on_first_batches"], bool) for r in halving)
    exact = SearchLog(tmp_path / "log.jsonl").evaluations()
    assert all(exact[(r["step"], r["candidate"])] == r["ppl"] for r in found.removed)


@pytest.mark.parametrize("method", ["shortgpt", "random", "last_k"])
def test_baselines_give_ppl_rows(adapter, windows, tmp_path, method):
    found = search(adapter, windows, tmp_path, method)
    assert len(found.removed) == 2 and all(r["ppl"] > 0 for r in found.removed)
    order = next(r for r in SearchLog(tmp_path / "log.jsonl").records if r["type"] == "order")["order"]
    assert [r["candidate"] for r in found.removed] == order[:2]
    if method == "last_k":
        assert order[:2] == ["layers.17.block", "layers.9.block"]


def test_cpu_uses_torch_kernels():
    assert kernels_for("cpu") is TORCH


def ranked(adapter, windows, tmp_path, shortlist, log="ranked.jsonl", steps=2, **kw):
    candidates = [c for c in adapter.candidates(["mamba_block", "ssm"]) if c.layer % 8 == 1]
    scorer = PerplexityScorer(adapter, windows, 2, torch.device("cpu"), **kw)
    stage = Stage(candidates, StopRule(num_components=steps))
    found = GreedySearch(adapter, scorer, [stage], SearchLog(tmp_path / log), show_progress=False, method="ranked", shortlist=shortlist).run()
    adapter.masked.clear()
    return found


def test_perturbation_is_the_relative_change_of_the_layer_output(adapter, windows):
    from shedder_ov.adapters import Candidate

    scorer = PerplexityScorer(adapter, windows, 2, torch.device("cpu"), cache_budget_bytes=1 << 20)  # stride > 1
    assert scorer.stride > 1
    candidate = Candidate(9, "ssm")
    [score] = scorer.perturbations([candidate])
    changed = size = 0.0
    with torch.no_grad():
        for ids in windows.split(2):
            hidden = adapter.embed(ids)
            for layer in range(9):
                hidden = adapter.layer_forward(layer, hidden)
            base = adapter.layer_forward(9, hidden).double()
            adapter.mask(candidate)
            changed += (adapter.layer_forward(9, hidden).double() - base).square().sum().item()
            adapter.unmask(candidate)
            size += base.square().sum().item()
    assert math.isclose(score, changed / size, rel_tol=1e-6) and score > 0


def test_ranked_confirms_its_shortlist_by_ppl(adapter, windows, tmp_path):
    from shedder_ov.adapters import Candidate

    exact = search(adapter, windows, tmp_path, "fast", targets=("mamba_block", "ssm"), log="fast.jsonl")
    everything = ranked(adapter, windows, tmp_path, shortlist=100, log="all.jsonl")
    assert [r["candidate"] for r in everything.removed] == [r["candidate"] for r in exact.removed]  # nothing cut: exact
    one = ranked(adapter, windows, tmp_path, shortlist=1)
    records = SearchLog(tmp_path / "ranked.jsonl").records
    rankings = [r for r in records if r["type"] == "ranking"]
    assert [r["step"] for r in rankings] == [1, 2] and len(rankings[0]["scores"]) == 6
    for row, ranking in zip(one.removed, rankings):  # the least disruptive candidate, its PPL exact
        assert row["candidate"] == min(ranking["scores"], key=ranking["scores"].get)
    assert one.evaluated_now == 1 + 2  # the base model, then one PPL per step
    first = one.candidates[0]  # step 2's scores, carried before its layer, equal fresh ones
    assert 0 < rankings[1]["scored"] < len(rankings[1]["scores"]) or first.layer == 1
    adapter.mask(first)
    scorer = PerplexityScorer(adapter, windows, 2, torch.device("cpu"))
    names = list(rankings[1]["scores"])
    fresh = scorer.perturbations([Candidate.parse(n) for n in names])
    adapter.masked.clear()
    for name, score in zip(names, fresh):
        assert math.isclose(rankings[1]["scores"][name], score, rel_tol=1e-6), name
    again = ranked(adapter, windows, tmp_path, shortlist=1)
    assert again.evaluated_now == 0 and again.removed == one.removed  # resumed from the log, ranking included
