"""The iterative greedy search of Mamba-Shedder.

Each step masks every remaining candidate in turn, scores the calibration PPL, and removes
the candidate with the lowest PPL (ties: the earlier candidate). Every evaluation goes to the
log as it happens; evaluations found in the log are not redone, so a killed run resumes and
ends with the identical result."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..adapters import Candidate, MambaFamilyAdapter
from ..errors import ShedderError
from ..recipe import StopRule
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
    ):
        self.adapter, self.scorer, self.candidates, self.stop, self.log = adapter, scorer, candidates, stop, log
        self.show_progress = show_progress
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
        gone_blocks = {c.layer for c in removed if c.kind == "mamba_block"}
        return [c for c in self.candidates if c not in removed and c.layer not in gone_blocks]

    def _done(self, removed: list[Candidate], remaining: list[Candidate]) -> str:
        if len(removed) >= max_steps(self.adapter, self.candidates) or not remaining:
            return "no candidates left"
        if self.stop.num_components is not None and len(removed) >= self.stop.num_components:
            return f"{self.stop.num_components} components removed"
        if self.stop.param_reduction_pct is not None:
            share = self.adapter.removed_params(removed) / self.original_params * 100
            if share >= self.stop.param_reduction_pct:
                return f"{share:.2f}% of parameters removed (target {self.stop.param_reduction_pct}%)"
        return ""

    def _evaluate(self, step: int, candidate: Candidate | None, known: dict, result: SearchResult) -> float:
        key = (step, candidate.name if candidate else None)
        result.evaluations += 1
        if key in known:
            return known[key]
        started = time.perf_counter()
        if candidate is None:
            ppl = self.scorer.perplexity()
        else:
            self.adapter.mask(candidate)
            ppl = self.scorer.perplexity(from_layer=candidate.layer)
            self.adapter.unmask(candidate)
        seconds = time.perf_counter() - started
        self.log.append({"type": "eval", "step": step, "candidate": key[1], "ppl": ppl, "seconds": round(seconds, 4)})
        result.evaluated_now += 1
        return ppl

    def run(self) -> SearchResult:
        started = time.perf_counter()
        known = self.log.evaluations()
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
            step = 1
            while True:
                remaining = self._remaining(removed)
                result.stopped_by = self._done(removed, remaining)
                if result.stopped_by:
                    break
                task = progress.add_task(f"step {step}", total=len(remaining))
                scores = []
                for candidate in remaining:
                    scores.append((self._evaluate(step, candidate, known, result), candidate))
                    progress.advance(task)
                    progress.advance(overall)
                progress.remove_task(task)
                best_ppl, best = min(scores, key=lambda s: s[0])  # min keeps the first of equal scores
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
