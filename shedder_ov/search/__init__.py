"""Mamba-Shedder search: greedy removal of the component whose masking hurts PPL least."""

from .greedy import GreedySearch, SearchResult, Stage, check_feasible
from .log import SearchLog
from .scorer import PerplexityScorer

__all__ = ["GreedySearch", "PerplexityScorer", "SearchLog", "SearchResult", "Stage", "check_feasible"]
