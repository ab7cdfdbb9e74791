"""Per-layer states of the exported graph, per family, in the order the graph takes them.

A layer has, in this order: `key`, `value` [b, kv_heads, past, head_dim] (Zamba2 layers whose
invocation runs attention, Falcon-H1 layers that kept attention, GraniteMoeHybrid attention layers;
dim 2 grows by each call's length), `ssm` (layers whose SSM survived:
Mamba-1 [b, d_inner, n], Mamba-2 / Zamba2 [b, heads, head_dim, n]) and `conv` [b, channels,
kernel-1] (layers with a mixer). Each kind is numbered densely (`cache_params.past.ssm.0, .1,
...`): optimum-intel's OVModelWithMambaForCausalLM indexes its per-kind state lists by that
number. (In the Mamba families every layer has a conv window, so its number is the layer's.)"""

from __future__ import annotations

from collections import Counter

KV_KINDS = ("key", "value")


def ssm_layers(config) -> list[bool]:
    removed = set(getattr(config, "ssm_removed_layers", None) or [])
    return [i not in removed for i in range(config.num_hidden_layers)]


def mamba_states(config, batch: int, past: int) -> list[dict[str, list[int]]]:
    window, inner = config.conv_kernel - 1, config.intermediate_size
    with_ssm = {"ssm": [batch, inner, config.state_size], "conv": [batch, inner, window]}
    return [with_ssm if has_ssm else {"conv": [batch, inner, window]} for has_ssm in ssm_layers(config)]


def mamba2_states(config, batch: int, past: int) -> list[dict[str, list[int]]]:
    """Per layer: SSM [b, heads_i, head_dim, n] and conv [b, heads_i * head_dim + 2·G·N, k-1],
    heads_i from `config.layer_heads` where a layer lost heads; an SSM-less layer's conv window
    holds its full-width x only."""
    window, inner = config.conv_kernel - 1, int(config.expand * config.hidden_size)
    layer_heads = getattr(config, "layer_heads", None) or [config.num_heads] * config.num_hidden_layers
    layers = []
    for has_ssm, heads in zip(ssm_layers(config), layer_heads):
        if has_ssm:
            layers.append({
                "ssm": [batch, heads, config.head_dim, config.state_size],
                "conv": [batch, heads * config.head_dim + 2 * config.n_groups * config.state_size, window],
            })
        else:
            layers.append({"conv": [batch, inner, window]})
    return layers


def zamba2_states(config, batch: int, past: int) -> list[dict[str, list[int]]]:
    """From `config.layer_specs` (modeling_shedder_zamba2): KV where the invocation runs attention,
    SSM + conv where the Mamba part kept its SSM, conv only where it did not."""
    window, inner = config.mamba_d_conv - 1, int(config.mamba_expand * config.hidden_size)
    kv = [batch, config.num_key_value_heads, past, config.attention_head_dim]
    layers = []
    for spec in config.layer_specs:
        states = {"key": kv, "value": kv} if spec["block"] is not None and spec["attention"] else {}
        if spec["mamba"] and spec["ssm"]:
            states["ssm"] = [batch, config.n_mamba_heads, config.mamba_headdim, config.mamba_d_state]
            states["conv"] = [batch, inner + 2 * config.mamba_ngroups * config.mamba_d_state, window]
        elif spec["mamba"]:
            states["conv"] = [batch, inner, window]
        layers.append(states)
    return layers


def falcon_h1_states(config, batch: int, past: int) -> list[dict[str, list[int]]]:
    """Stock Falcon-H1 (every layer: attention and a Mamba-2 branch) or `config.layer_specs`
    (modeling_shedder_falcon_h1): KV with the layer's kv_heads where attention is kept, SSM [b,
    heads, head_dim, n] + conv [b, heads·head_dim + 2·groups·n, k-1] where the Mamba branch kept
    its scan, conv [b, heads·head_dim, k-1] where it did not."""
    window, state, head_dim = config.mamba_d_conv - 1, config.mamba_d_state, config.mamba_d_head
    specs, stock_inner = getattr(config, "layer_specs", None), None
    if specs is None:  # stock: one width for all layers (mamba_d_ssm may differ from heads · head_dim)
        specs = [{"kv_heads": config.num_key_value_heads, "mamba_heads": config.mamba_n_heads, "ssm": True}] * config.num_hidden_layers
        stock_inner = config.mamba_d_ssm or int(config.mamba_expand * config.hidden_size)
    attention_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    layers = []
    for spec in specs:
        states = {}
        if spec["kv_heads"]:
            states["key"] = states["value"] = [batch, spec["kv_heads"], past, attention_dim]
        if spec["mamba_heads"]:
            width = stock_inner or spec["mamba_heads"] * head_dim
            if spec["ssm"]:
                states["ssm"] = [batch, spec["mamba_heads"], head_dim, state]
                states["conv"] = [batch, width + 2 * config.mamba_n_groups * state, window]
            else:
                states["conv"] = [batch, width, window]
        layers.append(states)
    return layers


def granitemoehybrid_states(config, batch: int, past: int) -> list[dict[str, list[int]]]:
    """Stock GraniteMoeHybrid (`layer_types`: one mixer per layer) or `config.layer_specs`
    (modeling_shedder_granitemoehybrid): KV with the layer's kv_heads for attention, SSM [b,
    heads, head_dim, n] + conv [b, heads·head_dim + 2·groups·n, k-1] for a Mamba-2 mixer that
    kept its scan, conv [b, heads·head_dim, k-1] for one that did not, nothing without a mixer."""
    window, state, head_dim = config.mamba_d_conv - 1, config.mamba_d_state, config.mamba_d_head
    specs = getattr(config, "layer_specs", None) or [
        {"mixer": kind, "ssm": True, "mamba_heads": config.mamba_n_heads, "kv_heads": config.num_key_value_heads}
        for kind in config.layer_types
    ]
    attention_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    layers = []
    for spec in specs:
        states = {}
        if spec["mixer"] == "attention":
            states["key"] = states["value"] = [batch, spec["kv_heads"], past, attention_dim]
        elif spec["mixer"] == "mamba":
            width = spec["mamba_heads"] * head_dim
            if spec["ssm"]:
                states["ssm"] = [batch, spec["mamba_heads"], head_dim, state]
                states["conv"] = [batch, width + 2 * config.mamba_n_groups * state, window]
            else:
                states["conv"] = [batch, width, window]
        layers.append(states)
    return layers


def state_names(layers: list[dict[str, list[int]]], direction: str) -> list[tuple[str, str]]:
    """(name, kind) of every state tensor of `layers` (a family's per-layer states) in graph order;
    direction past|present."""
    names, count = [], Counter()
    for layer in layers:
        for kind in layer:
            names.append((f"cache_params.{direction}.{kind}.{count[kind]}", kind))
            count[kind] += 1
    return names


def dynamic_axes(kind: str, direction: str) -> dict[int, str]:
    """The IR's dynamic dims of one state: batch, and the sequence of KV states."""
    if kind not in KV_KINDS:
        return {0: "batch_size"}
    length = "past_sequence_length" if direction == "past" else "past_sequence_length + sequence_length"
    return {0: "batch_size", 2: length}
