"""Byte-identical IRs from identical models: OpenVINO names the nodes nobody named after a
process-wide counter (`Constant_179671`, `Model16`), so the same export gives another .xml in
another process — a resumed run could not be told from an uninterrupted one. Renumbering
those names in order of appearance makes the .xml depend on the graph alone."""

from __future__ import annotations

import re
from pathlib import Path

from ..io import atomic_file

# a whole name (or one of a port's comma-separated names) `Type_<counter>`, an output's maybe with `.<port>`;
# traced names never look so
AUTO_NAME = re.compile(r'(?<=[",])([A-Z][A-Za-z0-9]*)_([0-9]+)(\.[0-9]+)?(?=[",])')
MODEL_NAME = re.compile(r'<net name="Model[0-9]+"')


def stable_names(xml: str) -> str:
    """The IR text with every counter-made node name numbered by first appearance."""
    numbers: dict[str, str] = {}

    def renumber(match: re.Match) -> str:
        kind, counter, port = match.groups()
        return numbers.setdefault(f"{kind}_{counter}", f"{kind}_{len(numbers)}") + (port or "")

    return AUTO_NAME.sub(renumber, MODEL_NAME.sub('<net name="Model"', xml, count=1))


def make_names_stable(folder: Path) -> None:
    """Rewrite every IR .xml of `folder` in place (the .bin files do not hold names)."""
    for path in sorted(folder.glob("*.xml")):
        text = stable_names(path.read_text())
        with atomic_file(path) as tmp:
            tmp.write_text(text)
