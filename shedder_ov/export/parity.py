"""IR vs torch on fixed prompts: prefill logits (short and ≥1024-token prompt, f32 on both
sides) and greedy tokens, through our runtime and through openvino.genai's LLMPipeline (what
OpenVINO users deploy with; it feeds the mask of all tokens so far and resets the states between
calls). The torch side is the adapter's exact cache-free forward, in f32: weights stored in 16
bits (what the IR then stores) are upcast one layer at a time, the very values the IR computes
with, so the reference is what an f32 load gave, without a second f32 copy of the model.

Memory: the torch model, our runtime's compiles and openvino.genai's are never alive together
(the torch model is loaded again for the last check). Time: torch's greedy tokens are checked in
one forward over the prompt and the IR's tokens (each position's argmax must be the IR's next
token), which holds exactly when token-by-token torch greedy gives the IR's tokens. openvino.genai's
long prompt is cut to what its dynamic-shape prefill can hold on this machine (all 1024 tokens up
to ~1B parameters on 24 GiB; `genai_long_prompt_tokens` says how many)."""

from __future__ import annotations

import numpy as np
import torch

from ..adapters import adapter_for
from ..checkpoints import load_checkpoint
from ..evaluation.runtime import f32_logits
from ..runtime import StatefulIR, genai_generate
from .layer_groups import GroupedIR
from .phases import GIB, available_bytes, fits, phase, release

TOLERANCE = 1e-3
LONG_PROMPT = 1024
NEW_TOKENS = 32
LONG_NEW_TOKENS = 8
COMPILES = 3  # shapes our runtime compiles here: the short prompt, one-token steps, 512-token pieces
GROUPED_COMPILE_BYTES = 2.5  # per byte of a layer group's f32 weights, its compile holds (measured 2.2 at 2.8B: folded + repacked)
GENAI_BYTES = 150  # openvino.genai prefill activations per hidden channel, layer and token (genai_prompt_tokens)
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


def torch_greedy(adapter, prompt: np.ndarray, new_tokens: int, logits=None) -> list[int]:
    """Greedy tokens, one cache-free forward per token: `adapter.logits`, or `logits(adapter, ids)`
    (f32_logits: f32, the weights upcast a layer at a time)."""
    forward = logits or (lambda adapter, ids: adapter.logits(ids))
    ids = torch.from_numpy(prompt)[None]
    tokens = []
    with torch.no_grad():
        for _ in range(new_tokens):
            tokens.append(int(forward(adapter, ids)[0, -1].argmax()))
            ids = torch.cat([ids, torch.tensor([[tokens[-1]]])], dim=1)
    return tokens


def genai_greedy(ir_dir, prompts: list[np.ndarray], new_tokens: list[int]) -> list[list[int]]:
    """Greedy tokens of openvino.genai's LLMPipeline (f32 hint) for each prompt, in one pipeline."""
    import openvino_genai

    pipe = openvino_genai.LLMPipeline(str(ir_dir), "CPU", INFERENCE_PRECISION_HINT="f32")
    return [[int(t) for t in genai_generate(pipe, prompt, count).tokens[0]] for prompt, count in zip(prompts, new_tokens)]


def genai_prompt_tokens(config, weight_bytes: int, f32_bytes: int) -> int:
    """The longest long prompt (≤ LONG_PROMPT, whole 16-token chunks) openvino.genai's prefill can
    take here: its dynamic compile keeps ~GENAI_BYTES activation bytes per hidden channel, layer
    and prompt token (measured, Mamba-1 at 790M width: +2.6 GB for 1024 tokens on 12 layers, 10 GB
    on 48) beside the IR's weights and their f32 copy."""
    free = available_bytes()
    if free is None:
        return LONG_PROMPT
    per_token = GENAI_BYTES * config.hidden_size * config.num_hidden_layers
    fits = (free - weight_bytes - f32_bytes - 2**30) // per_token
    return int(min(LONG_PROMPT, max(16, fits // 16 * 16)))


def stored_adapter(checkpoint):
    model = load_checkpoint(checkpoint, "stored", "cpu")
    return adapter_for(model, str(checkpoint))


def layer_groups_needed(stored_bytes: int, f32_bytes: int) -> int:
    """How many layer groups make one group's compile fit now beside the IR's mapped file (which a
    run in groups touches all of): GROUPED_COMPILE_BYTES per byte of the group's f32 weights."""
    room = (available_bytes() or 0) - stored_bytes - GIB
    return max(2, -(-int(f32_bytes * GROUPED_COMPILE_BYTES) // max(room, 1)))


def check_parity(ir_dir, checkpoint, tokenizer) -> dict:
    """The parity figures of an IR against the torch model (checkpoint folder) it was exported from."""
    with phase("parity", "torch f32 logits, short and long prompt"):
        adapter = stored_adapter(checkpoint)
        short, long = prompts(tokenizer, adapter.model.config.vocab_size)
        weights = [(p.numel() * p.element_size(), p.numel() * 4) for p in adapter.model.parameters()]
        stored_bytes, f32_bytes = map(sum, zip(*weights))
        reference = {name: f32_logits(adapter, torch.from_numpy(ids)[None]).numpy() for name, ids in (("short", short), ("long", long))}
        whole = fits(stored_bytes + f32_bytes)  # one compile of the whole IR, once the torch model is freed
        genai_long = long[: genai_prompt_tokens(adapter.model.config, stored_bytes, f32_bytes)] if whole else None
    if whole:
        del adapter
        release(stored_bytes)
        figures = whole_ir_parity(ir_dir, checkpoint, tokenizer, short, long, genai_long, reference, f32_bytes)
    else:
        with phase("parity", f"torch f32 greedy {NEW_TOKENS} tokens"):
            teacher = torch_greedy(adapter, short, NEW_TOKENS, f32_logits)
            del adapter
            release(stored_bytes)
        figures = grouped_parity(ir_dir, layer_groups_needed(stored_bytes, f32_bytes), short, long, reference, teacher)
        figures["genai_skipped"] = (f"one compile of the whole IR (openvino.genai's) needs ~{(stored_bytes + f32_bytes) / GIB:.1f} GiB, "
                                    f"{(available_bytes() or 0) / GIB:.1f} GiB available")
    figures.update(long_prompt_tokens=int(long.size), greedy_tokens=NEW_TOKENS, tolerance=TOLERANCE)
    figures["ok"] = (figures["greedy_equal"] and figures["genai_greedy_equal"] is not False
                     and max(figures["max_abs_diff_short"], figures["max_abs_diff_long"]) <= TOLERANCE)
    return figures


def grouped_parity(ir_dir, groups: int, short, long, reference, teacher: list[int]) -> dict:
    """The IR run in `groups` layer groups (layer_groups.py): prefill logits of both prompts, and
    torch's greedy tokens fed one at a time — each step's argmax must be torch's next token, which
    holds exactly when the IR's own greedy generation gives torch's tokens."""
    ir = GroupedIR(ir_dir, groups)
    with phase("parity", f"IR logits and greedy {NEW_TOKENS} tokens in layer groups (our runtime)"):
        steps = [np.array([[token]]) for token in teacher[:-1]]
        (short_logits, *step_logits), (long_logits,) = ir.run([[short[None], *steps], [long[None]]])
    ir_tokens = [int(short_logits[0, -1].argmax())] + [int(logits[0, -1].argmax()) for logits in step_logits]
    return {
        "max_abs_diff_short": float(np.abs(short_logits - reference["short"]).max()),
        "max_abs_diff_long": float(np.abs(long_logits - reference["long"]).max()),
        "layer_groups": ir.groups,
        "genai_long_prompt_tokens": 0,
        "greedy_equal": ir_tokens == teacher,
        "genai_greedy_equal": None,
    }


def whole_ir_parity(ir_dir, checkpoint, tokenizer, short, long, genai_long, reference, f32_bytes: int) -> dict:
    """The whole IR in our runtime (its specialized compiles) and in openvino.genai."""
    with phase("parity", f"IR logits and greedy {NEW_TOKENS} tokens (our runtime)"):
        # compiled for the short prompt, decode and 512-token pieces; each compile holds an f32 copy
        # of the weights, so where three copies do not fit they take turns
        ir = StatefulIR(ir_dir, one_compile=not fits(COMPILES * f32_bytes))
        ir.reset()
        diffs = {"short": float(np.abs(ir(short[None]) - reference["short"]).max())}
        ir_tokens, _ = ir.greedy(short, NEW_TOKENS)
        ir.reset()
        diffs["long"] = float(np.abs(ir(long[None]) - reference["long"]).max())
        long_tokens = ir.greedy(genai_long, LONG_NEW_TOKENS)[0] if tokenizer is not None else None
        del ir
        release(COMPILES * f32_bytes)
    long_first = int(reference["long"][0, genai_long.size - 1].argmax())  # torch's next token after genai's long prompt
    genai_tokens = None
    if tokenizer is not None:  # LLMPipeline needs the tokenizer IRs
        # after the long prompt, genai against our runtime (whose prefill logits were just compared
        # with torch's, and whose first token must be torch's): a torch greedy step there would
        # recompute the whole prompt each token
        with phase("parity", f"openvino.genai greedy, short and {genai_long.size}-token prompt"):
            genai_tokens = genai_greedy(ir_dir, [short, genai_long], [NEW_TOKENS, LONG_NEW_TOKENS])
            release(f32_bytes)
    with phase("parity", f"torch greedy check on the IR's {NEW_TOKENS} tokens"):
        forced = f32_logits(stored_adapter(checkpoint), torch.from_numpy(np.concatenate([short, ir_tokens[:-1]]))[None])
        torch_tokens = [int(t) for t in forced[0, short.size - 1 :].argmax(-1)]
    return {
        "max_abs_diff_short": diffs["short"],
        "max_abs_diff_long": diffs["long"],
        "genai_long_prompt_tokens": int(genai_long.size),
        "greedy_equal": ir_tokens == torch_tokens,
        "genai_greedy_equal": None if genai_tokens is None else genai_tokens == [torch_tokens, long_tokens] and long_tokens[0] == long_first,
    }
