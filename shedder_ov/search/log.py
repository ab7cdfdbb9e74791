"""Append-only JSONL log of every evaluation, the basis of resume-after-kill.

Each line is flushed and fsync'ed as it is written; a torn last line (killed mid-write) is
ignored on reading. Replaying the log gives back every finished evaluation. In a distributed
search the other ranks keep a replica: rank 0's records, appended to in memory only."""

from __future__ import annotations

import json
import os
from pathlib import Path


class SearchLog:
    def __init__(self, path: str | Path):
        self.path: Path | None = Path(path)
        self.records: list[dict] = []
        if self.path.exists():
            lines = self.path.read_text().splitlines()
            for line in lines:
                try:
                    self.records.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # torn tail of a killed write
            self._rewrite_clean(len(self.records) != len(lines))

    @classmethod
    def replica(cls, records: list[dict]) -> "SearchLog":
        """A log that holds `records` and appends in memory, writing nothing."""
        log = cls.__new__(cls)
        log.path, log.records = None, list(records)
        return log

    def _rewrite_clean(self, torn: bool) -> None:
        if torn:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.records))
            os.replace(tmp, self.path)

    def append(self, record: dict) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        self.records.append(record)

    def header(self) -> dict | None:
        return self.records[0] if self.records and self.records[0].get("type") == "run" else None

    def evaluations(self) -> dict[tuple[int, str | None], float]:
        """(step, candidate name) → PPL on all batches; step 0 with candidate None is the unpruned model."""
        return {(r["step"], r["candidate"]): r["ppl"] for r in self.records if r.get("type") == "eval" and "batches" not in r}

    def partial_evaluations(self) -> dict[int, dict[tuple[int, str], float]]:
        """Batches used → (step, candidate name) → PPL on those first batches (approximate search)."""
        found: dict[int, dict] = {}
        for r in self.records:
            if r.get("type") == "eval" and "batches" in r:
                found.setdefault(r["batches"], {})[(r["step"], r["candidate"])] = r["ppl"]
        return found
