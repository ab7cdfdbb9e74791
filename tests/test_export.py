"""OpenVINO export (issue 4): parity, stateful generation, optimum-intel loading, the plain
openvino.Core example, NNCF compression variants, bad input; deployment (issue 16): exact in
openvino.genai (its mask convention, chat, streaming, batches) and in stock optimum-intel."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from shedder_ov.adapters import Candidate, adapter_for
from shedder_ov.checkpoints import load_checkpoint
from shedder_ov.errors import ShedderError
from shedder_ov.export.compress import CompressOptions, compress_ir
from shedder_ov.export.exporter import export_checkpoint
from shedder_ov.export.graph import chunked_scan
from shedder_ov.export.parity import genai_greedy, torch_greedy
from shedder_ov.ops.selective_scan import selective_scan
from shedder_ov.runtime import StatefulIR, read_ir

from .conftest import FAMILIES, MODELS, REPO, assert_layer_groups_match_whole, assert_stock_optimum_matches_torch, require, tiny_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer):
    """Export on first use, once per module: tiny random models and a pruned mamba2-tiny."""
    cache = {}

    def get(name: str):
        if name not in cache:
            root = tmp_path_factory.mktemp(name)
            if name == "pruned":  # 2 blocks AND 2 SSMs removed from the real model
                model = load_checkpoint(require(MODELS / "mamba2-tiny"))
                removed = [Candidate(3, "mamba_block"), Candidate(10, "mamba_block"), Candidate(5, "ssm"), Candidate(17, "ssm")]
                model = adapter_for(model).pruned_model(removed)
            else:
                model = tiny_model(name)
            model.save_pretrained(root / "ckpt")
            tokenizer.save_pretrained(root / "ckpt")
            report = export_checkpoint(root / "ckpt", root / "ir", strict=True)
            cache[name] = (root / "ckpt", root / "ir", report)
        return cache[name]

    return get


@pytest.mark.parametrize("name", FAMILIES + ["pruned"])
def test_export_parity_and_states(exported, name):
    checkpoint, ir_dir, report = exported(name)
    parity = report["parity"]
    assert parity["ok"] and parity["greedy_equal"] and parity["long_prompt_tokens"] >= 1024
    assert parity["genai_greedy_equal"] is True  # openvino.genai's LLMPipeline, short and long prompt
    assert max(parity["max_abs_diff_short"], parity["max_abs_diff_long"]) <= 1e-3
    assert all((ir_dir / name).is_file() for name in ("openvino_tokenizer.xml", "openvino_detokenizer.xml"))
    config = load_checkpoint(checkpoint).config
    ssm_layers = config.num_hidden_layers - len(getattr(config, "ssm_removed_layers", None) or [])
    assert len(read_ir(ir_dir).get_variables()) == config.num_hidden_layers + ssm_layers  # conv + SSM states


@pytest.mark.parametrize("name", ["mamba2", "mamba"])  # FalconMamba's graph is Mamba-1's
def test_layer_groups_match_whole_ir(exported, name):
    assert_layer_groups_match_whole(exported(name)[1])


def test_prefill_in_pieces_matches_whole(exported):
    """The state carried by the IR: a prompt fed in three calls gives the same logits."""
    _, ir_dir, _ = exported("pruned")
    ir, ids = StatefulIR(ir_dir, specialize=False), np.arange(1, 301) % 8000
    whole = ir(ids[None])
    ir.reset()
    pieces = np.concatenate([ir(ids[None, :200]), ir(ids[None, 200:201]), ir(ids[None, 201:])], axis=1)
    assert np.abs(whole - pieces).max() < 1e-3


@pytest.mark.parametrize("length", [1, 17, 512, 600])
def test_exported_mamba1_scan_matches_reference(length):
    """The graph's channels-last chunked scan (unrolled carry up to 32 chunks, loop beyond)
    against the torch selective scan the search uses, from a nonzero state."""
    torch.manual_seed(0)
    u, delta = torch.randn(2, length, 8), torch.nn.functional.softplus(torch.randn(2, length, 8))
    A, B, C, state = -2 * torch.rand(8, 4), torch.randn(2, length, 4), torch.randn(2, length, 4), torch.randn(2, 8, 4)
    y, final = chunked_scan(u, delta, A, B, C, state)
    y_ref, final_ref = selective_scan(u.transpose(1, 2), delta.transpose(1, 2), A, B, C, initial_state=state)
    assert torch.allclose(y, y_ref.transpose(1, 2), atol=1e-4) and torch.allclose(final, final_ref, atol=1e-4)


def runtime_op_types(request) -> set[str]:
    return {op.get_rt_info()["layerType"].astype(str) for op in request.get_compiled_model().get_runtime_model().get_ordered_ops()}


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_specialized_runtime_matches_dynamic(exported, name):
    """Static-shape compiles (128-token prefill pieces + remainder, If-free decode step, state
    copied between them) give the logits of the single dynamic compile (600 tokens in one call:
    Mamba-1 carries its > 32 chunks by the loop, the pieces by the unrolled scan); so does a
    last-position LM head."""
    _, ir_dir, _ = exported(name)
    ids = np.arange(1, 601)[None] % 1000
    dynamic, fast = StatefulIR(ir_dir, specialize=False), StatefulIR(ir_dir, piece=128)
    assert fast.split(600) == [128, 128, 128, 128, 88]
    expected, got = [dynamic(ids)], [fast(ids)]
    for _ in range(4):
        expected.append(dynamic(expected[-1][:, -1:].argmax(-1)))
        got.append(fast(got[-1][:, -1:].argmax(-1)))
    assert max(np.abs(a - b).max() for a, b in zip(expected, got)) < 1e-4
    last = StatefulIR(ir_dir, piece=128, last_logits=True)
    assert np.abs(last(ids) - expected[0][:, -1:]).max() < 1e-4 and last(ids[:, :5]).shape[1] == 1
    assert "If" in runtime_op_types(dynamic.live)
    assert "If" not in runtime_op_types(fast.live) and set(fast.requests) == {(1, 128), None, (1, 1)}


def test_prompt_and_decode_compile_at_their_own_precision(exported):
    """precision "f32/bf16": prompt pieces compile under the f32 hint (logits bit-equal to an all-f32
    runtime), one-token steps under bf16 where the CPU has it, continuing the state the f32 prefill
    left; the decode logits stay within bf16 rounding of the f32 ones."""
    import openvino as ov

    _, ir_dir, _ = exported("mamba2")
    ids = np.arange(1, 301)[None] % 1000
    exact, mixed = StatefulIR(ir_dir), StatefulIR(ir_dir, precision="f32/bf16")
    assert np.array_equal(exact(ids), mixed(ids))
    steps = [(exact(ids[:, -1:] + k), mixed(ids[:, -1:] + k)) for k in range(1, 9)]
    scale = np.abs(steps[0][0]).max()
    assert max(np.abs(a - b).max() for a, b in steps) <= 0.05 * scale
    bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    hints = {key: request.get_compiled_model().get_property("INFERENCE_PRECISION_HINT").get_type_name()
             for key, request in mixed.requests.items()}
    assert hints[(1, 1)] == ("bf16" if bf16 else "f32") and hints[None] == "f32"


def test_optimum_generate_and_pipeline(exported, tokenizer):
    from optimum.intel import OVModelForCausalLM
    from transformers import pipeline

    checkpoint, ir_dir, _ = exported("pruned")
    model = OVModelForCausalLM.from_pretrained(ir_dir, ov_config={"INFERENCE_PRECISION_HINT": "f32"})
    assert model.stateful
    prompt = tokenizer("Once upon a time, there was a", return_tensors="pt")["input_ids"]
    out = model.generate(prompt, max_new_tokens=16, min_new_tokens=16, do_sample=False)
    expected = torch_greedy(adapter_for(load_checkpoint(checkpoint)), prompt[0].numpy(), 16)
    assert out[0, prompt.shape[1] :].tolist() == expected
    text = pipeline("text-generation", model=model, tokenizer=tokenizer)("Once upon a time", max_new_tokens=8, do_sample=False)
    assert text[0]["generated_text"].startswith("Once upon a time")


def test_decode_mask_may_cover_all_tokens(exported):
    """A decode step fed the mask of every token so far (transformers, genai, optimum-intel) gives
    what the same step fed the new token's mask gives (our runtime)."""
    import openvino as ov

    _, ir_dir, _ = exported("pruned")
    compiled = ov.Core().compile_model(ir_dir / "openvino_model.xml", "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    logits = []
    for mask_length in (lambda n: 1, lambda n: n):
        request, ids, steps = compiled.create_infer_request(), np.array([[5, 17, 300, 42, 7]]), []
        for _ in range(4):
            n = ids.shape[1] + len(steps)
            feed = ids if not steps else np.array([[int(steps[-1].argmax())]])
            out = request.infer({"input_ids": feed, "attention_mask": np.ones((1, len(feed[0]) if not steps else mask_length(n)), np.int64), "beam_idx": np.zeros(1, np.int32)})
            steps.append(out["logits"][0, -1].copy())
        logits.append(np.stack(steps))
    assert logits[0].shape == logits[1].shape and np.abs(logits[0] - logits[1]).max() < 1e-5


@pytest.mark.parametrize("name", ["mamba2", "mamba", "falcon_mamba"])
def test_dynamic_compile_on_growing_prompts(exported, name):
    """One dynamic-shape compile (as genai and optimum-intel run the IR), prompts each longer than
    any before, from fresh states: every position's logits match torch. (These lengths as first
    calls broke Mamba-1 IRs whose padding mask was applied to the conv input before its window.)"""
    import openvino as ov

    checkpoint, ir_dir, _ = exported(name)
    adapter = adapter_for(load_checkpoint(checkpoint))
    compiled = ov.Core().compile_model(ir_dir / "openvino_model.xml", "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for length in (16, 128, 143, 300, 511, 1040, 2047):
        ids = np.random.default_rng(length).integers(2, 8000, (1, length))
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "beam_idx": np.zeros(1, np.int32)}
        logits = compiled.create_infer_request().infer(feed)["logits"]
        with torch.no_grad():
            assert np.abs(logits - adapter.logits(torch.from_numpy(ids)).numpy()).max() < 1e-3, length


@pytest.mark.parametrize("name", ["mamba", "falcon_mamba", "pruned"])  # optimum-intel's Mamba class (both Mamba-1 families), its generic stateful decoder
def test_stock_optimum_intel_without_package(exported, name):
    checkpoint, ir_dir, _ = exported(name)
    assert_stock_optimum_matches_torch(checkpoint, ir_dir, 12)


@pytest.mark.parametrize("name", FAMILIES)
def test_left_padded_batch_matches_single(exported, name):
    """A left-padded batch (as genai and optimum-intel batch prompts) in a dynamic compile: each
    row's logits at its real positions equal the prompt's alone; the padding, whatever its ids,
    reaches neither the conv windows nor the scans."""
    import openvino as ov

    _, ir_dir, _ = exported(name)
    compiled = ov.Core().compile_model(ir_dir / "openvino_model.xml", "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    ids = np.random.default_rng(0).integers(2, 8000, (2, 40))
    mask = np.ones_like(ids)
    mask[1, :13] = 0  # row 1: a 27-token prompt behind 13 pads
    batch = compiled.create_infer_request().infer({"input_ids": ids, "attention_mask": mask, "beam_idx": np.arange(2, dtype=np.int32)})["logits"]
    for row, start in ((0, 0), (1, 13)):
        alone = ids[row : row + 1, start:]
        feed = {"input_ids": alone, "attention_mask": np.ones_like(alone), "beam_idx": np.zeros(1, np.int32)}
        single = compiled.create_infer_request().infer(feed)["logits"]
        assert np.abs(batch[row : row + 1, start:] - single).max() < 1e-4, row


def test_genai_chat_streaming_and_batches(exported):
    """openvino.genai as users call it, on a pruned IR: text in, a chat whose second turn equals
    the whole history recomputed, streaming that yields the same text, a left-padded batch equal
    to its prompts one by one."""
    import openvino_genai

    _, ir_dir, _ = exported("pruned")
    pipe = openvino_genai.LLMPipeline(str(ir_dir), "CPU", INFERENCE_PRECISION_HINT="f32")
    pipe.get_tokenizer().set_chat_template("{% for message in messages %}{{ message['content'] }}{% endfor %}")
    config = openvino_genai.GenerationConfig(max_new_tokens=10, ignore_eos=True, do_sample=False)
    pipe.start_chat()
    first = pipe.generate("Once upon a time", config)
    second = pipe.generate(" The dog", config)
    pipe.finish_chat()
    assert pipe.generate("Once upon a time" + first + " The dog", config) == second
    streamed = []
    assert pipe.generate("Once upon a time", config, lambda text: streamed.append(text) or False) == first == "".join(streamed)
    prompts = ["Once upon a time", "The little dog ran to the big park and"]
    assert pipe.generate(prompts, config).texts == [pipe.generate(p, config) for p in prompts]


def test_plain_openvino_example_without_torch(exported):
    _, ir_dir, _ = exported("pruned")
    script = (
        "import runpy, sys; sys.argv = ['generate_ov.py', sys.argv[1], 'Once upon a time', '--max-new-tokens', '12'];"
        "runpy.run_path(sys.argv[0] if False else %r, run_name='__main__');"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'" % str(REPO / "export" / "generate_ov.py")
    )
    result = subprocess.run([sys.executable, "-c", script, str(ir_dir)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Once upon a time" in result.stdout and "tok/s" in result.stdout


@pytest.mark.parametrize("mode,group_size", [("int8_sym", None), ("int8_asym", None), ("int4_sym", 32), ("int4_asym", None)])
def test_compression_variants_load(exported, tmp_path, mode, group_size):
    from optimum.intel import OVModelForCausalLM

    _, ir_dir, _ = exported("mamba2")
    report = compress_ir(ir_dir, tmp_path / mode, CompressOptions(mode=mode, group_size=group_size))
    assert report["ir_bytes"] < (ir_dir / "openvino_model.bin").stat().st_size
    model = OVModelForCausalLM.from_pretrained(tmp_path / mode)
    assert model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, min_new_tokens=4, do_sample=False).shape[1] == 7
    prompt = np.arange(3, 40)
    assert genai_greedy(tmp_path / mode, [prompt], [8]) == [StatefulIR(tmp_path / mode, specialize=False).greedy(prompt, 8)[0]]  # tokenizer IRs carried; genai compiles it dynamically


@pytest.mark.parametrize(
    "options,message",
    [
        (CompressOptions(mode="int5_sym"), "unknown compression mode"),
        (CompressOptions(mode="int4_sym", group_size=48), "does not divide the hidden size"),
        (CompressOptions(mode="int8_sym", gptq=True), "not applicable to Mamba"),
        (CompressOptions(mode="int4_sym", lora_correction=True), "not applicable to Mamba"),
        (CompressOptions(mode="int4_sym", awq=True), "need --dataset"),
    ],
)
def test_compression_bad_options(exported, tmp_path, options, message):
    _, ir_dir, _ = exported("mamba2")
    with pytest.raises(ShedderError, match=message):
        compress_ir(ir_dir, tmp_path / "out", options)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_corrupted_ir_and_unsupported_family(exported, tmp_path):
    import shutil

    _, ir_dir, _ = exported("mamba2")
    broken = tmp_path / "broken"
    shutil.copytree(ir_dir, broken)
    (broken / "openvino_model.xml").write_text((broken / "openvino_model.xml").read_text()[:2000])
    with pytest.raises(ShedderError, match="corrupted IR"):
        compress_ir(broken, tmp_path / "out", CompressOptions())
    (broken / "openvino_model.bin").unlink()
    with pytest.raises(ShedderError, match="not an OpenVINO IR folder"):
        StatefulIR(broken)
    (tmp_path / "jamba").mkdir()
    (tmp_path / "jamba" / "config.json").write_text('{"model_type": "jamba"}')
    with pytest.raises(ShedderError, match="unsupported architecture"):
        export_checkpoint(tmp_path / "jamba", tmp_path / "hybrid")
    assert not (tmp_path / "out").exists() and not (tmp_path / "hybrid").exists()


def test_cli_one_line_error(tmp_path):
    from typer.testing import CliRunner

    from shedder_ov.cli import app

    result = CliRunner().invoke(app, ["compress", str(tmp_path), str(tmp_path / "out"), "--mode", "int8_sym"])
    assert result.exit_code == 2 and "not an OpenVINO IR folder" in result.output
