"""Per-layer recurrent state shapes of a (possibly pruned) Mamba-family model.

Layer i keeps a conv window `conv.i` [b, channels, kernel-1] and, if its SSM survived, the
j-th SSM state `ssm.j` ([b, d_inner, n] for Mamba-1, [b, heads, head_dim, n] for Mamba-2).
SSM states are numbered densely because optimum-intel indexes its state lists by that number."""

from __future__ import annotations


def ssm_layers(config) -> list[bool]:
    removed = set(getattr(config, "ssm_removed_layers", None) or [])
    return [i not in removed for i in range(config.num_hidden_layers)]


def state_shapes(config, batch: int) -> list[dict[str, list[int]]]:
    """Per layer: {"ssm": shape (when present), "conv": shape}."""
    window = config.conv_kernel - 1
    if config.model_type.endswith("mamba2"):
        inner = int(config.expand * config.hidden_size)
        conv_with_ssm = inner + 2 * config.n_groups * config.state_size
        ssm = [batch, config.num_heads, config.head_dim, config.state_size]
    else:
        inner = config.intermediate_size
        conv_with_ssm = inner
        ssm = [batch, inner, config.state_size]
    shapes = []
    for has_ssm in ssm_layers(config):
        shapes.append({"ssm": ssm, "conv": [batch, conv_with_ssm, window]} if has_ssm else {"conv": [batch, inner, window]})
    return shapes


def state_names(config, direction: str) -> list[tuple[str, str]]:
    """(name, kind) of every state tensor in the order the graph takes them; direction past|present."""
    names, ssm_index = [], 0
    for layer, has_ssm in enumerate(ssm_layers(config)):
        if has_ssm:
            names.append((f"cache_params.{direction}.ssm.{ssm_index}", "ssm"))
            ssm_index += 1
        names.append((f"cache_params.{direction}.conv.{layer}", "conv"))
    return names
