"""Runtime defaults by CPU kind: the table's row follows the flags, every consumer starts from it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from shedder_ov.cpu import DEFAULTS, cpu_facts, cpu_kind, runtime_defaults

ROOT = Path(__file__).resolve().parents[1]


AVX512_BF16 = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"]


@pytest.mark.parametrize("flags, vendor, family, kind", [
    (AVX512_BF16 + ["amx_tile", "amx_int8", "amx_bf16"], "GenuineIntel", 6, "amx"),  # Xeon 4th/5th gen
    (AVX512_BF16, "AuthenticAMD", 25, "avx512_bf16"),  # Zen 4
    (AVX512_BF16, "AuthenticAMD", 26, "zen5"),
    (AVX512_BF16, "GenuineIntel", 6, "avx512_bf16"),  # Cooper Lake
    (["avx2"], "AuthenticAMD", 25, "avx2"),  # Zen 3
    ([], "", 0, "avx2"),
])
def test_kind_follows_the_flags(flags, vendor, family, kind):
    assert cpu_kind(flags, vendor, family) == kind


def test_this_cpu_gets_its_row():
    facts = cpu_facts()
    assert facts["model_name"] and facts["amx"] in ("absent", "works", "faults", "unprobed")
    defaults = runtime_defaults()
    assert defaults is DEFAULTS[facts["kind"]]
    properties = defaults.properties()
    assert properties["INFERENCE_PRECISION_HINT"] == defaults.precision.split("/")[0] and properties["NUM_STREAMS"] == 1
    assert properties["INFERENCE_NUM_THREADS"] >= 1


def test_generate_ov_starts_from_the_table():
    """export/generate_ov.py runs without shedder_ov, so it holds the table's values itself."""
    spec = importlib.util.spec_from_file_location("generate_ov", ROOT / "export" / "generate_ov.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for kind, row in DEFAULTS.items():  # one compile (its LLMPipeline): the prompt's hint, the exact one
        assert (module.PRECISION, module.THREADS, module.STREAMS) == (row.properties()["INFERENCE_PRECISION_HINT"], row.threads, row.streams), kind
