"""IR vs torch on fixed prompts: prefill logits (short and ≥1024-token prompt, f32 on both
sides) and greedy tokens, through our runtime and through openvino.genai's LLMPipeline (what
OpenVINO users deploy with; it feeds the mask of all tokens so far and resets the states between
calls). The torch side is the adapter's exact cache-free forward."""

from __future__ import annotations

import numpy as np
import torch

from ..runtime import StatefulIR, genai_generate

TOLERANCE = 1e-3
LONG_PROMPT = 1024
NEW_TOKENS = 32
# OpenVINO 2026.4.1: a dynamic-shape compile (openvino.genai's, optimum-intel's) of the Mamba-1
# chunked scan, which sits inside the decode/prefill If, can return wrong prefill logits on some
# first calls of a new prompt length (docs/export.md); recorded, not required, for these families
DYNAMIC_COMPILE_UNRELIABLE = frozenset({"mamba", "falcon_mamba"})
LONG_NEW_TOKENS = 8
STORY = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her dog. "
    "One day, she saw a big red ball under a tree and ran to get it. "
)


def prompts(tokenizer, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A short and a long prompt: story text when there is a tokenizer, else seeded token ids."""
    if tokenizer is not None:
        ids = tokenizer(STORY * 64, add_special_tokens=False)["input_ids"]
        if len(ids) >= LONG_PROMPT:
            return np.array(ids[:16]), np.array(ids[:LONG_PROMPT])
    ids = torch.randint(0, vocab_size, (LONG_PROMPT,), generator=torch.Generator().manual_seed(0)).numpy()
    return ids[:16], ids


def torch_greedy(adapter, prompt: np.ndarray, new_tokens: int) -> list[int]:
    ids = torch.from_numpy(prompt)[None]
    tokens = []
    with torch.no_grad():
        for _ in range(new_tokens):
            tokens.append(int(adapter.logits(ids)[0, -1].argmax()))
            ids = torch.cat([ids, torch.tensor([[tokens[-1]]])], dim=1)
    return tokens


def genai_greedy(ir_dir, prompts: list[np.ndarray], new_tokens: list[int]) -> list[list[int]]:
    """Greedy tokens of openvino.genai's LLMPipeline (f32 hint) for each prompt, in one pipeline."""
    import openvino_genai

    pipe = openvino_genai.LLMPipeline(str(ir_dir), "CPU", INFERENCE_PRECISION_HINT="f32")
    return [[int(t) for t in genai_generate(pipe, prompt, count).tokens[0]] for prompt, count in zip(prompts, new_tokens)]


def check_parity(ir_dir, adapter, tokenizer) -> dict:
    """The parity figures of an IR against the torch model it was exported from."""
    ir = StatefulIR(ir_dir)
    short, long = prompts(tokenizer, adapter.model.config.vocab_size)
    diffs = {}
    with torch.no_grad():
        for name, ids in (("short", short), ("long", long)):
            ir.reset()
            reference = adapter.logits(torch.from_numpy(ids)[None]).numpy()
            diffs[name] = float(np.abs(ir(ids[None]) - reference).max())
    long_first = int(reference[0, -1].argmax())  # torch's next token after the long prompt
    ir_tokens, _ = ir.greedy(short, NEW_TOKENS)
    torch_tokens = torch_greedy(adapter, short, NEW_TOKENS)
    equal = ir_tokens == torch_tokens
    genai_equal = None
    if tokenizer is not None:  # LLMPipeline needs the tokenizer IRs
        # after the long prompt, genai against our runtime (whose prefill logits were just compared
        # with torch's, and whose first token must be torch's): a torch greedy step there would
        # recompute the whole prompt each token
        long_tokens, _ = ir.greedy(long, LONG_NEW_TOKENS)
        genai_tokens = genai_greedy(ir_dir, [short, long], [NEW_TOKENS, LONG_NEW_TOKENS])
        genai_equal = genai_tokens == [torch_tokens, long_tokens] and long_tokens[0] == long_first
    return {
        "max_abs_diff_short": diffs["short"],
        "max_abs_diff_long": diffs["long"],
        "long_prompt_tokens": int(long.size),
        "greedy_tokens": NEW_TOKENS,
        "greedy_equal": equal,
        "genai_greedy_equal": genai_equal,
        "tolerance": TOLERANCE,
        "ok": equal and (genai_equal is not False or adapter.family in DYNAMIC_COMPILE_UNRELIABLE) and max(diffs.values()) <= TOLERANCE,
    }
