"""Runtime defaults by CPU kind: the table's row follows the flags, every consumer starts from it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from shedder_ov.cpu import DEFAULTS, cpu_facts, cpu_kind, runtime_defaults

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("flags, kind", [
    (["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"], "amx"),  # Xeon 4th/5th gen
    (["avx2", "avx512f", "avx512_vnni", "avx512_bf16"], "avx512_bf16"),  # Zen 4
    (["avx2"], "avx2"),  # Zen 3
    ([], "avx2"),
])
def test_kind_follows_the_flags(flags, kind):
    assert cpu_kind(flags) == kind


def test_this_cpu_gets_its_row():
    facts = cpu_facts()
    assert facts["model_name"] and facts["amx"] in ("absent", "works", "faults", "unprobed")
    defaults = runtime_defaults()
    assert defaults is DEFAULTS[facts["kind"]]
    properties = defaults.properties()
    assert properties["INFERENCE_PRECISION_HINT"] == defaults.precision and properties["NUM_STREAMS"] == 1
    assert properties["INFERENCE_NUM_THREADS"] >= 1


def test_generate_ov_starts_from_the_table():
    """export/generate_ov.py runs without shedder_ov, so it holds the table's values itself."""
    spec = importlib.util.spec_from_file_location("generate_ov", ROOT / "export" / "generate_ov.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for kind, row in DEFAULTS.items():
        assert (module.PRECISION, module.THREADS, module.STREAMS) == (row.precision, row.threads, row.streams), kind
