"""Shared fixtures: tiny random models of each family, the real shared models and data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoTokenizer,
    FalconMambaConfig,
    FalconMambaForCausalLM,
    Mamba2Config,
    Mamba2ForCausalLM,
    MambaConfig,
    MambaForCausalLM,
)

import shedder_ov  # noqa: F401  (registers the pruned classes)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHEDDER_SHARED", REPO.parent / "shared"))
# real-model checks that repeat, on another family, what a faster test already shows on a real
# model (CI keeps the suite under 15 minutes); SHEDDER_REAL_ALL=1 runs them too
also_real = pytest.mark.skipif(os.environ.get("SHEDDER_REAL_ALL") != "1", reason="set SHEDDER_REAL_ALL=1 (a real-model repeat)")
MODELS = SHARED / "models"
TRAIN_TEXT = SHARED / "data" / "tinystories" / "train.txt"
EVAL_TEXT = SHARED / "data" / "tinystories" / "eval.txt"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def tiny_config(family: str):
    """A few-layer random config per family; Mamba-2 uses 2 groups and a short chunk."""
    common = dict(hidden_size=64, num_hidden_layers=4, vocab_size=8192, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if family == "mamba2":
        return Mamba2Config(**common, num_heads=8, head_dim=16, state_size=16, n_groups=2, chunk_size=16, expand=2)
    if family == "mamba":
        return MambaConfig(**common, state_size=8, intermediate_size=128, time_step_rank=8)
    if family == "falcon_mamba":
        return FalconMambaConfig(**common, state_size=8, intermediate_size=128, time_step_rank=8)
    raise ValueError(family)


MODEL_CLASSES = {"mamba2": Mamba2ForCausalLM, "mamba": MambaForCausalLM, "falcon_mamba": FalconMambaForCausalLM}
FAMILIES = list(MODEL_CLASSES)


def tiny_model(family: str, seed: int = 0):
    torch.manual_seed(seed)
    model = MODEL_CLASSES[family](tiny_config(family)).eval()
    with torch.no_grad():  # spread A/dt so the SSMs matter
        for layer in model.backbone.layers:
            layer.mixer.A_log.uniform_(-1.0, 1.5)
    return model


@pytest.fixture
def one_thread():
    """Tiny models: on a busy 2-core machine, syncing 2 threads per op costs more than it saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"shared fixture missing: {path} (set SHEDDER_SHARED)")
    return path


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(require(MODELS / "mamba2-tiny"))


@pytest.fixture
def tiny_checkpoint(tmp_path, tokenizer):
    """Save a tiny random model with the shared tokenizer; returns a factory(family) -> folder."""

    def make(family: str) -> Path:
        folder = tmp_path / f"tiny-{family}"
        tiny_model(family).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder

    return make


def assert_runtime_matches_dynamic(ir_dir: Path) -> None:
    """An IR with a KV cache: static-shape compiles (128-token pieces + remainder, the If-free
    decode step with the plugin's fused KV-cache attention, KV of any length copied between them)
    against the single dynamic compile; a prompt fed in three calls against the whole."""
    import numpy as np

    from shedder_ov.runtime import StatefulIR

    ids = np.arange(1, 301)[None] % 8000
    dynamic, fast = StatefulIR(ir_dir, specialize=False), StatefulIR(ir_dir, piece=128, config={"PERF_COUNT": True})
    expected, got = [dynamic(ids)], [fast(ids)]
    for _ in range(4):
        expected.append(dynamic(expected[-1][:, -1:].argmax(-1)))
        got.append(fast(got[-1][:, -1:].argmax(-1)))
    assert max(np.abs(a - b).max() for a, b in zip(expected, got)) < 1e-4
    assert set(fast.requests) == {(1, 128), None, (1, 1)}
    executed = {info.node_type for info in fast.live.get_profiling_info()}
    assert "If" not in executed and "ScaledDotProductAttentionWithKVCache" in executed  # the fused KV cache
    dynamic.reset()
    pieces = np.concatenate([dynamic(ids[:, :200]), dynamic(ids[:, 200:201]), dynamic(ids[:, 201:])], axis=1)
    assert np.abs(expected[0] - pieces).max() < 1e-4


def load_without_package(folder: Path, ids: torch.Tensor) -> dict:
    """Load a checkpoint with trust_remote_code in a fresh interpreter where shedder_ov cannot
    be imported; returns its class's module and name, its config and its logits on `ids`."""
    import json
    import subprocess
    import sys

    script = f"""
import sys, json, torch
sys.modules["shedder_ov"] = None  # any import of the package now fails
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(torch.tensor({ids.tolist()}), use_cache=False).logits
print(json.dumps({{"module": type(model).__module__, "cls": type(model).__name__, "config": model.config.to_dict(), "logits": logits.tolist()}}))
"""
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=folder.parent)
    loaded = json.loads(output.stdout.strip().splitlines()[-1])
    loaded["logits"] = torch.tensor(loaded["logits"])
    return loaded


def assert_layer_groups_match_whole(ir_dir: Path, groups: int = 2) -> None:
    """The IR cut into layer groups (each group's compile holding only its layers' weights and
    states) gives the logits of the whole IR, prompt and decode steps alike."""
    import numpy as np

    from shedder_ov.export.layer_groups import GroupedIR, LayerGroups, layer_of
    from shedder_ov.runtime import StatefulIR, read_ir

    whole = read_ir(ir_dir)
    layers = {layer_of(op) for op in whole.get_ops()} - {None}
    cut = LayerGroups(read_ir(ir_dir), groups)
    held = [{layer_of(op) for op in cut.build(g).get_ops()} - {None} for g in range(groups)]
    assert set().union(*held) == layers and max(map(len, held)) < len(layers)  # no group holds every layer's weights
    ids = np.arange(5, 45)[None] % 8000
    calls = [ids[:, :16], ids[:, 16:17], ids[:, 17:18]]
    grouped = GroupedIR(ir_dir, groups).run([calls, [ids]])
    ir = StatefulIR(ir_dir)
    expected = [ir(call) for call in calls]
    ir.reset()
    for got, want in zip(grouped[0] + grouped[1], expected + [ir(ids)]):
        assert got.shape == want.shape and np.abs(got - want).max() < 1e-4


def assert_genai_batch_matches_single(ir_dir: Path) -> None:
    """openvino.genai's LLMPipeline on a batch of prompts of different lengths (it pads them on
    the left) gives each prompt's text alone, token for token (f32 hint)."""
    import openvino_genai

    pipe = openvino_genai.LLMPipeline(str(ir_dir), "CPU", INFERENCE_PRECISION_HINT="f32")
    config = openvino_genai.GenerationConfig(max_new_tokens=10, ignore_eos=True, do_sample=False)
    prompts = ["Once upon a time", "The little dog ran to the big park and"]
    assert pipe.generate(prompts, config).texts == [pipe.generate(p, config) for p in prompts]


def stock_optimum_greedy(ir_dir: Path, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy tokens of an IR folder loaded the standard way, `OVModelForCausalLM.from_pretrained`
    (f32 hint), in a fresh interpreter where shedder_ov cannot be imported: what a user of stock
    optimum-intel gets."""
    import json
    import subprocess
    import sys

    script = f"""
import sys, json, torch
sys.modules["shedder_ov"] = None
from optimum.intel import OVModelForCausalLM
model = OVModelForCausalLM.from_pretrained({str(ir_dir)!r}, ov_config={{"INFERENCE_PRECISION_HINT": "f32"}}, trust_remote_code=True)
ids = torch.tensor([{prompt}])
out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens={new_tokens}, min_new_tokens={new_tokens}, do_sample=False)
print(json.dumps(out[0, ids.shape[1]:].tolist()))
"""
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ir_dir.parent)
    assert output.returncode == 0, output.stderr[-2000:]
    return json.loads(output.stdout.strip().splitlines()[-1])


def assert_stock_optimum_matches_torch(checkpoint: Path, ir_dir: Path, new_tokens: int = 10) -> None:
    """Stock optimum-intel (no shedder_ov) generates the torch model's greedy tokens from the IR."""
    import numpy as np

    from shedder_ov.adapters import adapter_for
    from shedder_ov.checkpoints import load_checkpoint
    from shedder_ov.export.parity import torch_greedy

    prompt = np.array([5, 17, 300, 42, 7, 99, 1000, 3])
    expected = torch_greedy(adapter_for(load_checkpoint(checkpoint)), prompt, new_tokens)
    assert stock_optimum_greedy(ir_dir, prompt.tolist(), new_tokens) == expected


@torch.no_grad()
def assert_generate_matches_recompute(model, prompt: torch.Tensor, new_tokens: int = 10) -> None:
    """Greedy `generate` with the model's cache gives the tokens of full recompute, token by token."""
    generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, do_sample=False)
    sequence = prompt
    for _ in range(new_tokens):
        sequence = torch.cat([sequence, model(sequence, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, sequence)


@torch.no_grad()
def assert_graph_in_pieces_matches_model(model, forward_with_states, zero_states) -> None:
    """A family's traced function itself (torch): a prompt fed as 11 + 1 + 1 + 27 tokens, states
    carried (KV grows, RoPE at the offset, chunked scan from a state, one-token steps), gives the
    model's own cache-free logits. `zero_states(config, batch)` -> the graph's initial states."""
    from shedder_ov.adapters import adapter_for

    ids = torch.randint(0, 8192, (2, 40), generator=torch.Generator().manual_seed(1))
    states, pieces = zero_states(model.config, 2), []
    for start, end in ((0, 11), (11, 12), (12, 13), (13, 40)):
        logits, states = forward_with_states(adapter_for(model), ids[:, start:end], torch.ones(2, end - start), states)
        pieces.append(logits)
    assert torch.allclose(torch.cat(pieces, dim=1), model(ids, use_cache=False).logits, atol=1e-5)


@torch.no_grad()
def assert_graph_steps_match_generate(model, forward_with_states, zero_states) -> None:
    """Greedy decoding on the graph's states = the model's generate() on its own cache."""
    from shedder_ov.adapters import adapter_for

    prompt = torch.randint(1, 8192, (1, 7), generator=torch.Generator().manual_seed(2))
    expected = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, min_new_tokens=12, do_sample=False)
    states, ids, tokens = zero_states(model.config, 1), prompt, []
    for _ in range(12):
        logits, states = forward_with_states(adapter_for(model), ids, torch.ones(ids.shape), states)
        ids = logits[:, -1:].argmax(-1)
        tokens.append(int(ids))
    assert tokens == expected[0, 7:].tolist()


def exported_layouts(tmp_path_factory, tokenizer, build):
    """get(layout) -> (checkpoint, IR folder, parity report) of `build(layout)`, exported (strict) once per module."""
    from shedder_ov.export.exporter import export_checkpoint

    cache = {}

    def get(layout: str):
        if layout not in cache:
            root = tmp_path_factory.mktemp(layout)
            build(layout).save_pretrained(root / "ckpt")
            tokenizer.save_pretrained(root / "ckpt")
            cache[layout] = (root / "ckpt", root / "ir", export_checkpoint(root / "ckpt", root / "ir", strict=True))
        return cache[layout]

    return get


def assert_real_model_exports(source: Path, ir_dir: Path, states: int, story: str) -> None:
    """A trained model exports with strict parity, has `states` state variables, and its IR's
    greedy continuation of "Once upon a time" starts with `story` (its MODEL_CARD.md sample)."""
    import numpy as np

    from shedder_ov.checkpoints import load_tokenizer
    from shedder_ov.export.exporter import export_checkpoint
    from shedder_ov.runtime import StatefulIR, read_ir

    assert export_checkpoint(source, ir_dir, strict=True)["parity"]["ok"]
    assert len(read_ir(ir_dir).get_variables()) == states
    tokenizer = load_tokenizer(source)
    prompt = np.array(tokenizer("Once upon a time", add_special_tokens=False)["input_ids"])
    tokens, _ = StatefulIR(ir_dir).greedy(prompt, len(tokenizer(story)["input_ids"]))
    assert tokenizer.decode(list(prompt) + tokens).startswith(story)
