"""The iterative greedy search of Mamba-Shedder, and the same loop for the other methods.

Each step masks every remaining candidate in turn, scores the calibration PPL, and removes
the candidate with the lowest PPL (ties: the earlier candidate). A search is a list of stages
(the reference prunes Zamba2 in three: blocks, then MLP channels, then SSMs), each its own
greedy loop with its own candidates and stop rule, starting from the model the stage before it
left; steps are numbered across stages. Every evaluation goes to the log as it happens;
evaluations found in the log are not redone, so a killed run resumes and ends with the identical
result.

Stop rules: `num_components` counts the stage's own removals; `param_reduction_pct` the whole
model's reduction so far; `max_ppl_increase_pct` is measured against the original model's PPL.

`halving` (approximate) scores all candidates on the first batches only and re-scores the
best fraction on twice as many, until the survivors are scored on all batches. `ranked`
(approximate, for many small candidates such as heads) ranks all candidates by how much each
changes its own layer's output (`PerplexityScorer.perturbations`: one layer forward each instead
of every later layer and the head) and scores only the `shortlist` least disruptive by PPL. The baselines
(`shortgpt`, `random`, `last_k`) take candidates in a fixed order; each step still scores the
PPL of its removal, so every method gives the same PPL-vs-removed rows."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..adapters import HEADED, Candidate, FamilyAdapter
from ..errors import ShedderError
from ..recipe import StopRule
from .baselines import BASELINES
from .distributed import Ranks
from .log import SearchLog
from .scorer import PerplexityScorer


@dataclass
class Stage:
    """One greedy loop; `setup` runs when the stage starts (e.g. ranks MLP channels on the
    model the earlier stages left)."""

    candidates: list[Candidate]
    stop: StopRule
    setup: Callable[[], None] | None = None


@dataclass
class SearchResult:
    ppl_original: float
    removed: list[dict] = field(default_factory=list)  # {step, stage, candidate, ppl, params_removed}
    stages: list[dict] = field(default_factory=list)  # {stage, steps, stopped_by}
    evaluations: int = 0
    evaluated_now: int = 0
    seconds: float = 0.0
    stopped_by: str = ""

    @property
    def candidates(self) -> list[Candidate]:
        return [Candidate.parse(r["candidate"]) for r in self.removed]


def most_removable(adapter: FamilyAdapter, candidates: list[Candidate]) -> list[Candidate]:
    """The largest removal these candidates allow, as far as the adapter's rules let each go:
    parts first (heads before the rest: one head per group always stays, and a branch's heads
    and its scan exclude each other), then whole layers from the largest (one layer must stay)."""
    parts = sorted((c for c in candidates if not adapter.removes_layer(c)), key=lambda c: c.kind not in HEADED)
    whole = sorted((c for c in candidates if adapter.removes_layer(c)), key=lambda c: -adapter.removed_params([c]))
    removed: list[Candidate] = []
    for candidate in parts + whole:
        while adapter.available(candidate, removed):
            removed.append(candidate)
    return removed


def check_feasible(adapter: FamilyAdapter, stages: list[Stage]) -> None:
    """Refuse a stop rule that no search over these stages can reach, before anything is scored."""
    original = adapter.num_params()
    for index, stage in enumerate(stages):
        stop = stage.stop
        where = "search.stop" if len(stages) == 1 else f"search.stages.{index}.stop"
        if stop.num_components is not None:
            limit = len(most_removable(adapter, stage.candidates))
            if stop.num_components > limit:
                raise ShedderError(
                    f"{where}.num_components: {stop.num_components} requested, at most {limit} removals of the "
                    f"{len(stage.candidates)} candidates are possible"
                )
        if stop.param_reduction_pct is not None:
            reachable = [c for earlier in stages[: index + 1] for c in earlier.candidates]
            most = adapter.removed_params(most_removable(adapter, reachable)) / original * 100
            if stop.param_reduction_pct > most:
                kinds = sorted({c.kind for c in reachable})
                raise ShedderError(
                    f"{where}.param_reduction_pct: {stop.param_reduction_pct}% is impossible with targets "
                    f"{kinds}: at most {most:.1f}% of the parameters are removable"
                )


class GreedySearch:
    def __init__(
        self,
        adapter: FamilyAdapter,
        scorer: PerplexityScorer,
        stages: list[Stage],
        log: SearchLog,
        show_progress: bool = True,
        method: str = "fast",
        halving_keep: float = 0.25,
        shortlist: int = 8,
        seed: int = 42,
        ranks: Ranks | None = None,
    ):
        self.adapter, self.scorer, self.stages, self.log = adapter, scorer, stages, log
        self.ranks = ranks or Ranks(scorer.batches[0].device)
        self.show_progress = show_progress
        self.method, self.halving_keep, self.shortlist, self.seed = method, halving_keep, shortlist, seed
        self._order: list[Candidate] | None = None
        self.original_params = adapter.num_params()
        check_feasible(adapter, stages)

    def _remaining(self, stage: Stage, removed: list[Candidate]) -> list[Candidate]:
        return [c for c in stage.candidates if self.adapter.available(c, removed)]

    def _done(self, stop: StopRule, in_stage: int, removed: list[Candidate], remaining: list[Candidate]) -> str:
        if not remaining:
            return "no candidates left"
        if stop.num_components is not None and in_stage >= stop.num_components:
            return f"{stop.num_components} components removed"
        if stop.param_reduction_pct is not None:
            share = self.adapter.removed_params(removed) / self.original_params * 100
            if share >= stop.param_reduction_pct:
                return f"{share:.2f}% of parameters removed (target {stop.param_reduction_pct}%)"
        return ""

    def _evaluate(self, step: int, candidate: Candidate | None, known: dict, result: SearchResult) -> float:
        """PPL of the base model (candidate None) or of one candidate; from the log if there."""
        key = (step, candidate.name if candidate else None)
        result.evaluations += 1
        if key in known:
            return known[key]
        started = time.perf_counter()
        ppl = self.ranks.same(self.scorer.perplexity() if candidate is None else self.scorer.perplexities([candidate])[0])
        self._append(step, [candidate], [ppl], time.perf_counter() - started, None, result)
        return ppl

    def _evaluate_many(self, step: int, candidates: list[Candidate], known: dict, result: SearchResult, batches=None) -> list[float]:
        """PPLs of candidates (each masked alone) on the first `batches` batches; logged per round
        (one group of candidates on each rank)."""
        if batches is not None:
            known = known.setdefault(("batches", batches), {})
        result.evaluations += len(candidates)
        todo = [c for c in candidates if (step, c.name) not in known]
        per_round = self.scorer.group_size * self.ranks.world
        for first in range(0, len(todo), per_round):
            group = todo[first : first + per_round]
            started = time.perf_counter()
            score = functools.partial(self.scorer.perplexities, batches=batches)
            scores = self.ranks.gather(group, score, [self.scorer.cost(c) for c in group])
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

    def _choose(self, step: int, stage: Stage, remaining: list[Candidate], known: dict, result: SearchResult) -> tuple[float, Candidate]:
        if self.method in ("fast", "naive"):
            scores = self._evaluate_many(step, remaining, known, result)
            return min(zip(scores, remaining), key=lambda s: s[0])  # min keeps the first of equal scores
        if self.method == "halving":
            return self._choose_halving(step, remaining, known, result)
        if self.method == "ranked":
            return self._choose_ranked(step, remaining, known, result)
        if self._order is None:
            order = BASELINES[self.method](self.scorer, stage.candidates, self.seed)
            self._order = [Candidate.parse(name) for name in self.ranks.same([c.name for c in order])]
            if not any(r.get("type") == "order" and r.get("step", 1) == step for r in self.log.records):
                self.log.append({"type": "order", "method": self.method, "step": step, "order": [c.name for c in self._order]})
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

    def _choose_ranked(self, step, remaining, known, result) -> tuple[float, Candidate]:
        """Rank by layer-output perturbation (logged once per step), confirm the shortlist by PPL.
        The last removal (in layer L) changed nothing before L: within a stage, the scores of the
        earlier layers carry over from the step before."""
        logged = self._ranking(step)
        if logged is None:
            started = time.perf_counter()
            previous = self._ranking(step - 1) if step - 1 >= self._stage_start else None
            carried = {}
            if previous is not None:
                changed = Candidate.parse(result.removed[-1]["candidate"]).layer
                carried = {c.name: previous["scores"][c.name] for c in remaining if c.layer < changed}
            todo = [c for c in remaining if c.name not in carried]
            scores = {**carried, **dict(zip((c.name for c in todo), self.ranks.gather(todo, self.scorer.perturbations)))}
            logged = {
                "type": "ranking", "step": step, "scores": {c.name: scores[c.name] for c in remaining},
                "scored": len(todo), "seconds": round(time.perf_counter() - started, 4),
            }  # fmt: skip
            self.log.append(logged)
        ranked = sorted(remaining, key=lambda c: logged["scores"][c.name])  # stable: earlier wins ties
        chosen = set(ranked[: self.shortlist])
        shortlist = [c for c in remaining if c in chosen]
        self._advance(len(remaining) - len(shortlist))
        scores = self._evaluate_many(step, shortlist, known, result)
        return min(zip(scores, shortlist), key=lambda s: s[0])

    def _ranking(self, step: int) -> dict | None:
        return next((r for r in self.log.records if r.get("type") == "ranking" and r["step"] == step), None)

    def run(self) -> SearchResult:
        started = time.perf_counter()
        known = self.log.evaluations()
        for batches, scoped in self.log.partial_evaluations().items():
            known[("batches", batches)] = scoped
        result = SearchResult(ppl_original=0.0)
        self.scorer.rebase(0)
        result.ppl_original = self._evaluate(0, None, known, result)
        removed: list[Candidate] = []
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
        with Progress(*columns, disable=not self.show_progress, transient=False) as progress:
            planned = [s.stop.num_components for s in self.stages]
            total = sum(len(s.candidates) - k for s, n in zip(self.stages, planned) for k in range(n)) if all(planned) else None
            self._overall = progress.add_task("search (steps × candidates)", total=total)
            self._progress = progress
            for index, stage in enumerate(self.stages):
                self._run_stage(index, stage, removed, known, result)
        result.stopped_by = result.stages[-1]["stopped_by"]
        result.seconds = time.perf_counter() - started
        return result

    def _run_stage(self, index: int, stage: Stage, removed: list[Candidate], known: dict, result: SearchResult) -> None:
        """One greedy loop, appending its removals to `removed` and `result`."""
        if stage.setup is not None:
            stage.setup()
        self._order = None
        stop = stage.stop
        budget = (
            result.ppl_original * (1 + stop.max_ppl_increase_pct / 100) if stop.max_ppl_increase_pct is not None else float("inf")
        )
        step, in_stage = len(removed) + 1, 0
        self._stage_start = step
        while True:
            remaining = self._remaining(stage, removed)
            stopped_by = self._done(stop, in_stage, removed, remaining)
            if stopped_by:
                break
            task = self._progress.add_task(f"step {step}" + (f" (stage {index + 1})" if len(self.stages) > 1 else ""), total=len(remaining))
            self._tasks = (task, self._overall)
            best_ppl, best = self._choose(step, stage, remaining, known, result)
            self._progress.remove_task(task)
            if best_ppl > budget:
                stopped_by = f"next removal would exceed the PPL budget ({best_ppl:.3f} > {budget:.3f})"
                break
            self.adapter.mask(best)
            removed.append(best)
            self.scorer.rebase(best.layer)
            result.removed.append(
                {
                    "step": step,
                    "stage": index + 1,
                    "candidate": best.name,
                    "ppl": best_ppl,
                    "params_removed": self.adapter.removed_params(removed),
                }
            )
            step, in_stage = step + 1, in_stage + 1
        result.stages.append({"stage": index + 1, "steps": in_stage, "stopped_by": stopped_by})
