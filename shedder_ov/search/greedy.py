"""The iterative greedy search of Mamba-Shedder, and the same loop for the other methods.

Each step masks every remaining candidate in turn, scores the calibration PPL, and removes
the candidate with the lowest PPL (ties: the earlier candidate). Every evaluation goes to the
log as it happens; evaluations found in the log are not redone, so a killed run resumes and
ends with the identical result.

`halving` (approximate) scores all candidates on the first batches only and re-scores the
best fraction on twice as many, until the survivors are scored on all batches. The baselines
(`shortgpt`, `random`, `last_k`) take candidates in a fixed order; each step still scores the
PPL of its removal, so every method gives the same PPL-vs-removed rows."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..adapters import Candidate, MambaFamilyAdapter
from ..errors import ShedderError
from ..recipe import StopRule
from .baselines import BASELINES
from .log import SearchLog
from .scorer import PerplexityScorer


@dataclass
class SearchResult:
    ppl_original: float
    removed: list[dict] = field(default_factory=list)  # {step, candidate, ppl, params_removed}
    evaluations: int = 0
    evaluated_now: int = 0
    seconds: float = 0.0
    stopped_by: str = ""

    @property
    def candidates(self) -> list[Candidate]:
        return [Candidate.parse(r["candidate"]) for r in self.removed]


def max_steps(adapter: MambaFamilyAdapter, candidates: list[Candidate]) -> int:
    """Components that can be removed while at least one block remains."""
    blocks = sum(c.kind == "mamba_block" for c in candidates)
    return len(candidates) - (1 if blocks == adapter.num_layers else 0)


class GreedySearch:
    def __init__(
        self,
        adapter: MambaFamilyAdapter,
        scorer: PerplexityScorer,
        candidates: list[Candidate],
        stop: StopRule,
        log: SearchLog,
        show_progress: bool = True,
        method: str = "fast",
        halving_keep: float = 0.25,
        seed: int = 42,
    ):
        self.adapter, self.scorer, self.candidates, self.stop, self.log = adapter, scorer, candidates, stop, log
        self.show_progress = show_progress
        self.method, self.halving_keep, self.seed = method, halving_keep, seed
        self._order: list[Candidate] | None = None
        self.original_params = adapter.num_params()
        self._check_feasible()

    def _check_feasible(self) -> None:
        limit = max_steps(self.adapter, self.candidates)
        if self.stop.num_components is not None and self.stop.num_components > limit:
            raise ShedderError(
                f"search.stop.num_components: {self.stop.num_components} requested, at most {limit} of the "
                f"{len(self.candidates)} candidates can be removed"
            )
        if self.stop.param_reduction_pct is not None:
            ssms = [c for c in self.candidates if c.kind == "ssm"]
            blocks = sorted(
                (c for c in self.candidates if c.kind == "mamba_block"), key=lambda c: self.adapter.removed_params([c])
            )
            most = self.adapter.removed_params(ssms + blocks[1:]) / self.original_params * 100
            if self.stop.param_reduction_pct > most:
                raise ShedderError(
                    f"search.stop.param_reduction_pct: {self.stop.param_reduction_pct}% is impossible with targets "
                    f"{sorted({c.kind for c in self.candidates})}: at most {most:.1f}% of the parameters are removable"
                )

    def _remaining(self, removed: list[Candidate]) -> list[Candidate]:
        """Candidates still present; the last block of the model is never a candidate."""
        gone_blocks = {c.layer for c in removed if c.kind == "mamba_block"}
        last_block = len(gone_blocks) == self.adapter.num_layers - 1
        return [
            c
            for c in self.candidates
            if c not in removed and c.layer not in gone_blocks and not (last_block and c.kind == "mamba_block")
        ]

    def _done(self, removed: list[Candidate], remaining: list[Candidate]) -> str:
        if not remaining:
            return "no candidates left"
        if self.stop.num_components is not None and len(removed) >= self.stop.num_components:
            return f"{self.stop.num_components} components removed"
        if self.stop.param_reduction_pct is not None:
            share = self.adapter.removed_params(removed) / self.original_params * 100
            if share >= self.stop.param_reduction_pct:
                return f"{share:.2f}% of parameters removed (target {self.stop.param_reduction_pct}%)"
        return ""

    def _evaluate(self, step: int, candidate: Candidate | None, known: dict, result: SearchResult) -> float:
        """PPL of the base model (candidate None) or of one candidate; from the log if there."""
        key = (step, candidate.name if candidate else None)
        result.evaluations += 1
        if key in known:
            return known[key]
        started = time.perf_counter()
        ppl = self.scorer.perplexity() if candidate is None else self.scorer.perplexities([candidate])[0]
        self._append(step, [candidate], [ppl], time.perf_counter() - started, None, result)
        return ppl

    def _evaluate_many(self, step: int, candidates: list[Candidate], known: dict, result: SearchResult, batches=None) -> list[float]:
        """PPLs of candidates (each masked alone) on the first `batches` batches; logged per group."""
        if batches is not None:
            known = known.setdefault(("batches", batches), {})
        result.evaluations += len(candidates)
        todo = [c for c in candidates if (step, c.name) not in known]
        for first in range(0, len(todo), self.scorer.group_size):
            group = todo[first : first + self.scorer.group_size]
            started = time.perf_counter()
            scores = self.scorer.perplexities(group, batches=batches)
            self._append(step, group, scores, time.perf_counter() - started, batches, result)
            known.update({(step, c.name): ppl for c, ppl in zip(group, scores)})
            self._advance(len(group))
        return [known[(step, c.name)] for c in candidates]

    def _append(self, step, candidates, scores, seconds, batches, result) -> None:
        for candidate, ppl in zip(candidates, scores):
            record = {"type": "eval", "step": step, "candidate": candidate.name if candidate else None, "ppl": ppl}
            if batches is not None:
                record["batches"] = batches
            record["seconds"] = round(seconds / len(candidates), 4)
            self.log.append(record)
        result.evaluated_now += len(candidates)

    def _advance(self, n: int) -> None:
        for task in self._tasks:
            self._progress.advance(task, n)

    def _choose(self, step: int, remaining: list[Candidate], known: dict, result: SearchResult) -> tuple[float, Candidate]:
        if self.method in ("fast", "naive"):
            scores = self._evaluate_many(step, remaining, known, result)
            return min(zip(scores, remaining), key=lambda s: s[0])  # min keeps the first of equal scores
        if self.method == "halving":
            return self._choose_halving(step, remaining, known, result)
        if self._order is None:
            self._order = BASELINES[self.method](self.scorer, self.candidates, self.seed)
            if not any(r.get("type") == "order" for r in self.log.records):
                self.log.append({"type": "order", "method": self.method, "order": [c.name for c in self._order]})
        best = next(c for c in self._order if c in remaining)
        self._advance(len(remaining) - 1)
        return self._evaluate_many(step, [best], known, result)[0], best

    def _choose_halving(self, step, remaining, known, result) -> tuple[float, Candidate]:
        """Successive halving over calibration batches; the last round uses all of them."""
        total, batches, survivors, rounds = len(self.scorer.batches), 1, list(remaining), []
        while True:
            scope = None if batches >= total else batches
            scores = self._evaluate_many(step, survivors, known, result, batches=scope)
            ranked = sorted(zip(scores, survivors), key=lambda s: s[0])  # stable: earlier wins ties
            rounds.append({"batches": min(batches, total), "candidates": len(survivors), "leader": ranked[0][1].name})
            if scope is None or len(survivors) == 1:
                break
            keep = max(1, math.ceil(len(survivors) * self.halving_keep))
            kept = {c for _, c in ranked[:keep]}
            survivors = [c for c in remaining if c in kept]
            self._advance(len(ranked) - keep)
            batches *= 2
        best_ppl, best = ranked[0]
        if scope is not None:  # stopped with one survivor before the last round: score it exactly
            best_ppl = self._evaluate_many(step, [best], known, result)[0]
        differs = rounds[0]["leader"] != best.name
        if not any(r.get("type") == "halving" and r["step"] == step for r in self.log.records):  # not again on resume
            self.log.append(
                {"type": "halving", "step": step, "rounds": rounds, "choice": best.name, "differs_from_exact_on_first_batches": differs}
            )
        return best_ppl, best

    def run(self) -> SearchResult:
        started = time.perf_counter()
        known = self.log.evaluations()
        for batches, scoped in self.log.partial_evaluations().items():
            known[("batches", batches)] = scoped
        result = SearchResult(ppl_original=0.0)
        self.scorer.rebase(0)
        result.ppl_original = self._evaluate(0, None, known, result)
        budget = (
            result.ppl_original * (1 + self.stop.max_ppl_increase_pct / 100)
            if self.stop.max_ppl_increase_pct is not None
            else float("inf")
        )
        removed: list[Candidate] = []
        planned = self.stop.num_components
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
        with Progress(*columns, disable=not self.show_progress, transient=False) as progress:
            total = sum(len(self.candidates) - k for k in range(planned)) if planned else None
            overall = progress.add_task("search (steps × candidates)", total=total)
            self._progress = progress
            step = 1
            while True:
                remaining = self._remaining(removed)
                result.stopped_by = self._done(removed, remaining)
                if result.stopped_by:
                    break
                task = progress.add_task(f"step {step}", total=len(remaining))
                self._tasks = (task, overall)
                best_ppl, best = self._choose(step, remaining, known, result)
                progress.remove_task(task)
                if best_ppl > budget:
                    result.stopped_by = f"next removal would exceed the PPL budget ({best_ppl:.3f} > {budget:.3f})"
                    break
                self.adapter.mask(best)
                removed.append(best)
                self.scorer.rebase(best.layer)
                result.removed.append(
                    {
                        "step": step,
                        "candidate": best.name,
                        "ppl": best_ppl,
                        "params_removed": self.adapter.removed_params(removed),
                    }
                )
                step += 1
        result.seconds = time.perf_counter() - started
        return result
