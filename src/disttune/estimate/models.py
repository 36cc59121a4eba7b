"""Decoder architectures as config fields, exact parameter counts, and ``config.json`` reading.

Counts follow the transformers 5 modules (``modeling_*.py``) for Llama / Mistral / Qwen2 / Qwen3 / Gemma
1-3 / Phi-3 / GPT-2 and the mixture-of-experts Mixtral / Qwen2-MoE / Qwen3-MoE: embeddings V*h; per layer
q h*(a*d), k and v h*(kv*d) each (Phi-3 and GPT-2 fuse them into one tensor), o (a*d)*h, a gated MLP
gate/up h*i each and down i*h (GPT-2: fc and proj, not gated), 2 norms of h (Gemma 2/3: 4; GPT-2's
LayerNorm also has a bias), Qwen3 / Gemma 3 q_norm and k_norm of d; biases as each config says; a final
norm h; lm_head V*h unless ``tie_word_embeddings`` (a tied weight is one tensor, counted once).
A mixture-of-experts layer has a router E*h and its E experts as two fused tensors (E, 2i, h) and
(E, h, i) (transformers 5's layout), plus Qwen2-MoE's shared expert and its 1*h gate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from disttune.errors import UserError

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelSpec:
    """The config.json fields that decide parameter count and activation size."""

    name: str
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int  # dense MLP width (Mixtral: each expert's)
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool
    qkv_bias: bool = False  # Qwen2: always; Llama: attention_bias
    o_bias: bool = False  # Llama/Qwen3: attention_bias
    mlp_bias: bool = False  # Llama: mlp_bias
    qk_norm: bool = False  # Qwen3 / Gemma 3: RMSNorm(head_dim) on q and k
    norms_per_layer: int = 2  # Gemma 2/3: pre and post norms around attention and MLP
    norm_bias: bool = False  # GPT-2's LayerNorm
    mlp_gated: bool = True  # SwiGLU/GeGLU (3 matrices) or GPT-2's fc + proj (2)
    fused_qkv: bool = False  # Phi-3 qkv_proj, GPT-2 c_attn: one tensor
    fused_gate_up: bool = False  # Phi-3 gate_up_proj
    position_embeddings: int = 0  # GPT-2's learned positions (n_positions rows)
    num_experts: int = 0  # routed experts per MoE layer (0: dense model)
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0  # each routed expert's width
    shared_expert_intermediate_size: int = 0  # Qwen2-MoE
    shared_expert_gate: bool = False  # Qwen2-MoE: sigmoid gate h -> 1
    num_moe_layers: int = 0  # layers whose MLP is the MoE block (the rest are dense)
    # numel of each parameter outside the decoder (Gemma 3's vision tower and projector): held, trained and
    # sharded like the rest, but never run by a text-only batch
    extra_tensors: tuple[int, ...] = ()

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def mlp_width_per_token(self) -> float:
        """MLP width one token runs through, averaged over layers: i, or k x expert width + shared width."""
        moe = self.num_experts_per_tok * self.moe_intermediate_size + self.shared_expert_intermediate_size
        dense_layers = self.num_hidden_layers - self.num_moe_layers
        return (dense_layers * self.intermediate_size + self.num_moe_layers * moe) / self.num_hidden_layers


@dataclass(frozen=True)
class ParamCount:
    """Parameter count split the way the memory model needs it."""

    total: int  # as ``sum(p.numel() for p in model.parameters())`` (a tied lm_head counted once)
    embedding: int
    lm_head: int  # 0 when tied
    per_layer: int  # the largest decoder layer (an FSDP2 unit)
    largest_tensor: int  # numel of the biggest single weight (ZeRO-3 gathers module by module)
    small_tensors: int  # numel in tensors under DeepSpeed's 1e5 persistence threshold (norms, biases)
    active: int  # parameters one token passes through (MoE: k of E experts); = total for dense models


def _attention_tensors(spec: ModelSpec) -> list[int]:
    h, q, kv = spec.hidden_size, spec.q_dim, spec.kv_dim
    out = [h * (q + 2 * kv)] if spec.fused_qkv else [h * q, h * kv, h * kv]
    if spec.qkv_bias:
        out += [q + 2 * kv] if spec.fused_qkv else [q, kv, kv]
    out.append(q * h)
    if spec.o_bias:
        out.append(h)
    if spec.qk_norm:
        out += [spec.head_dim, spec.head_dim]
    out += [h] * (spec.norms_per_layer * (2 if spec.norm_bias else 1))
    return out


def _dense_mlp_tensors(spec: ModelSpec, i: int) -> list[int]:
    h = spec.hidden_size
    if not spec.mlp_gated:
        return [h * i, i * h] + ([i, h] if spec.mlp_bias else [])
    out = [2 * h * i] if spec.fused_gate_up else [h * i, h * i]
    out.append(i * h)
    if spec.mlp_bias:
        out += [2 * i] if spec.fused_gate_up else [i, i]
        out.append(h)
    return out


def _moe_tensors(spec: ModelSpec) -> list[int]:
    h, e, i = spec.hidden_size, spec.num_experts, spec.moe_intermediate_size
    out = [e * h, e * 2 * i * h, e * h * i]  # router, experts.gate_up_proj, experts.down_proj
    if spec.shared_expert_intermediate_size:
        out += _dense_mlp_tensors(spec, spec.shared_expert_intermediate_size)
    if spec.shared_expert_gate:
        out.append(h)
    return out


def moe_block_params(spec: ModelSpec) -> int:
    """Parameters of one MoE block (router, all experts, shared expert): what ZeRO-3 gathers at once when the
    block is a leaf module (``deepspeed.utils.set_z3_leaf_modules``, needed so that routing does not hang)."""
    return sum(_moe_tensors(spec)) if spec.num_moe_layers else 0


def layer_tensors(spec: ModelSpec, moe: bool = False) -> list[int]:
    """numel of every parameter tensor of one decoder layer (a MoE layer when ``moe``)."""
    mlp = _moe_tensors(spec) if moe else _dense_mlp_tensors(spec, spec.intermediate_size)
    return _attention_tensors(spec) + mlp


def count_params(spec: ModelSpec, persistence_threshold: int = 100_000) -> ParamCount:
    """Exact parameter count of ``spec`` (see the module docstring for the terms)."""
    dense, moe = layer_tensors(spec), layer_tensors(spec, moe=True) if spec.num_moe_layers else []
    n_dense, n_moe = spec.num_hidden_layers - spec.num_moe_layers, spec.num_moe_layers
    embed = spec.vocab_size * spec.hidden_size
    lm_head = 0 if spec.tie_word_embeddings else embed
    positions = spec.position_embeddings * spec.hidden_size
    final_norm = spec.hidden_size * (2 if spec.norm_bias else 1)
    outside = sum(spec.extra_tensors)
    total = embed + positions + n_dense * sum(dense) + n_moe * sum(moe) + final_norm + lm_head + outside
    extra = [embed, positions, lm_head] + [spec.hidden_size] * (2 if spec.norm_bias else 1)
    extra += spec.extra_tensors
    small = (
        n_dense * sum(n for n in dense if n <= persistence_threshold)
        + n_moe * sum(n for n in moe if n <= persistence_threshold)
        + sum(n for n in extra if 0 < n <= persistence_threshold)
    )
    idle_experts = (
        n_moe
        * (spec.num_experts - spec.num_experts_per_tok)
        * 3
        * spec.moe_intermediate_size
        * spec.hidden_size
    )
    per_layer = max(sum(dense) if n_dense else 0, sum(moe) if n_moe else 0)
    largest = max([*(dense if n_dense else []), *moe, embed, positions, *spec.extra_tensors])
    return ParamCount(total, embed, lm_head, per_layer, largest, small, total - idle_experts)


def matmul_params(spec: ModelSpec) -> int:
    """Weights the decoder layers multiply with (no norms, biases, embeddings or lm_head): what bf16 autocast
    casts to 16-bit copies that each matmul saves for its backward (``autocast_weight_copies``)."""
    h, q, kv = spec.hidden_size, spec.q_dim, spec.kv_dim
    attention = h * (q + 2 * kv) + q * h

    def mlp(i: int) -> int:
        return (3 if spec.mlp_gated else 2) * h * i if i else 0

    moe = spec.num_experts * h + 3 * spec.num_experts * spec.moe_intermediate_size * h
    moe += mlp(spec.shared_expert_intermediate_size)
    dense_layers = spec.num_hidden_layers - spec.num_moe_layers
    return (
        spec.num_hidden_layers * attention
        + dense_layers * mlp(spec.intermediate_size)
        + spec.num_moe_layers * moe
    )


def siglip_tensors(vision: dict, text_hidden: int, name: str) -> tuple[int, ...]:
    """numel of each tensor of Gemma 3's vision side: a SigLIP encoder (``vision_config``; its pooling head
    only when ``vision_use_head``, which Gemma 3 turns off) and the projector into the text width."""
    h = _whole(vision, "hidden_size", name)
    i = _whole(vision, "intermediate_size", name)
    n = _whole(vision, "num_hidden_layers", name)
    patch = _whole(vision, "patch_size", name)
    patches = (_whole(vision, "image_size", name) // patch) ** 2
    channels = _whole(vision, "num_channels", name, default=3)
    mlp = [i * h, i, h * i, h]
    layer = [h, h, *[h * h, h] * 4, h, h, *mlp]  # layer_norm1, q/k/v/out_proj, layer_norm2, fc1/fc2
    head = [h, 3 * h * h, 3 * h, h * h, h, h, h, *mlp] if vision.get("vision_use_head", True) else []
    embeddings = [channels * patch * patch * h, h, patches * h]
    return (*embeddings, *layer * n, h, h, *head, h * text_hidden, h)  # post_layernorm, projector + norm


def lora_params(spec: ModelSpec, r: int, targets: tuple[str, ...] = LORA_TARGETS) -> int:
    """Trainable LoRA parameters: r x (in + out) per adapted matrix (A is r x in, B is out x r).

    Every linear layer of attention and the dense / shared-expert MLP, as PEFT adapts them by name (fused
    tensors as one matrix). transformers 5 keeps the routed experts as 3-D parameters, not ``nn.Linear``,
    so PEFT's ``target_modules`` do not reach them and they stay frozen.
    """
    h, q, kv = spec.hidden_size, spec.q_dim, spec.kv_dim

    def mlp(i: int) -> int:
        if not spec.mlp_gated:
            return r * (h + i) * 2
        gate_up = (
            r * (h + 2 * i)
            if spec.fused_gate_up
            else sum(r * (h + i) for t in ("gate_proj", "up_proj") if t in targets)
        )
        return gate_up + (r * (i + h) if "down_proj" in targets else 0)

    shapes = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h)}
    attention = (
        r * (h + q + 2 * kv) + r * (q + h)
        if spec.fused_qkv
        else sum(r * sum(shapes[t]) for t in targets if t in shapes)
    )
    n_moe = spec.num_moe_layers
    dense = (spec.num_hidden_layers - n_moe) * mlp(spec.intermediate_size)
    shared = n_moe * mlp(spec.shared_expert_intermediate_size) if spec.shared_expert_intermediate_size else 0
    return spec.num_hidden_layers * attention + dense + shared


MODEL_TYPES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "gpt2",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
)
# transformers' Gemma3TextConfig and SiglipVisionConfig defaults, for the keys a published config leaves out
GEMMA3_TEXT_DEFAULTS = dict(
    vocab_size=262_208,
    hidden_size=2304,
    intermediate_size=9216,
    num_hidden_layers=26,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    tie_word_embeddings=True,
)
SIGLIP_DEFAULTS = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, image_size=224, patch_size=16
)
_SHAPE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")


def _whole(config: dict, key: str, name: str, default=None, minimum: int = 1) -> int:
    value = config.get(key)
    value = default if value is None else value
    if value is None:
        raise UserError(f"{name}: missing key {key!r}; is this a transformers config.json?")
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value != int(value) or value < minimum:
        raise UserError(
            f"{name}: {key} is {value!r}; it must be a whole number >= {minimum}. Fix the "
            f"config.json (or pass the model's published config)."
        )
    return int(value)


def _moe_fields(config: dict, name: str, model_type: str, n: int, i: int) -> dict:
    """The mixture-of-experts fields of ``ModelSpec`` from a Mixtral / Qwen2-MoE / Qwen3-MoE config."""
    if model_type not in ("mixtral", "qwen2_moe", "qwen3_moe"):
        return {}
    # config.json says num_local_experts (Mixtral) or num_experts (Qwen); transformers 5 may write either
    experts_key = "num_local_experts" if config.get("num_local_experts") is not None else "num_experts"
    e = _whole(config, experts_key, name)
    k = _whole(config, "num_experts_per_tok", name)
    if k > e:
        raise UserError(f"{name}: num_experts_per_tok {k} exceeds {experts_key} {e}.")
    step = _whole(config, "decoder_sparse_step", name, default=1)
    dense_only = config.get("mlp_only_layers") or []
    if not isinstance(dense_only, list):
        raise UserError(f"{name}: mlp_only_layers is {dense_only!r}; it must be a list of layer indices.")
    # every step-th layer is sparse unless listed as dense; counted, not looped (n may be absurdly large)
    listed = {int(j) for j in dense_only if isinstance(j, int | float) and math.isfinite(j) and j == int(j)}
    moe_layers = n // step - sum(1 for j in listed if 0 <= j < n and (j + 1) % step == 0)
    shared = (
        _whole(config, "shared_expert_intermediate_size", name, minimum=0) if model_type == "qwen2_moe" else 0
    )
    return dict(
        num_experts=e,
        num_experts_per_tok=k,
        num_moe_layers=moe_layers,
        moe_intermediate_size=i if model_type == "mixtral" else _whole(config, "moe_intermediate_size", name),
        shared_expert_intermediate_size=shared,
        shared_expert_gate=bool(shared),
    )


def spec_from_config(config: dict, name: str = "config.json") -> ModelSpec:
    """A ``ModelSpec`` from a parsed transformers ``config.json`` (the decoders in ``MODEL_TYPES``)."""
    model_type = config.get("model_type")
    if model_type == "gemma3" and isinstance(config.get("text_config"), dict):
        # Gemma 3 4B-27B: image-text models; AutoModelForCausalLM loads the vision tower with the decoder
        # published configs list only what differs from transformers' defaults: fill in the same defaults
        text = {**GEMMA3_TEXT_DEFAULTS, **config["text_config"], "model_type": "gemma3_text"}
        spec = spec_from_config(text, name)
        vision = config.get("vision_config")
        if not isinstance(vision, dict):
            raise UserError(f"{name}: model_type gemma3 needs a vision_config object.")
        vision = {**SIGLIP_DEFAULTS, **vision}
        return replace(spec, extra_tensors=siglip_tensors(vision, spec.hidden_size, name))
    if model_type not in MODEL_TYPES:
        hint = (
            " It is a multimodal config: point --model at its text decoder's config, or use --num_params."
            if "text_config" in config
            else ""
        )
        raise UserError(
            f"{name}: model_type {model_type!r} is not supported; estimate knows "
            f"{', '.join(MODEL_TYPES)}.{hint} Use --num_params N (with --hidden_size and "
            f"--num_hidden_layers for activations) for other models."
        )
    if model_type == "gpt2":  # GPT-2 names its fields differently
        config = {
            **config,
            "vocab_size": config.get("vocab_size"),
            "hidden_size": config.get("n_embd"),
            "num_hidden_layers": config.get("n_layer"),
            "num_attention_heads": config.get("n_head"),
        }
        if config.get("n_inner") is None and isinstance(config["hidden_size"], int):
            config["intermediate_size"] = 4 * config["hidden_size"]
        else:
            config["intermediate_size"] = config.get("n_inner")
    v, h, n, a = (_whole(config, key, name) for key in _SHAPE_KEYS)
    i = _whole(config, "intermediate_size", name, minimum=0 if model_type == "qwen3_moe" else 1)
    kv = _whole(config, "num_key_value_heads", name, default=a)
    if a % kv:
        raise UserError(f"{name}: num_attention_heads {a} is not a multiple of num_key_value_heads {kv}.")
    if config.get("head_dim") is None and h % a:
        raise UserError(
            f"{name}: hidden_size {h} is not divisible by num_attention_heads {a}; give head_dim."
        )
    d = _whole(config, "head_dim", name, default=h // a)
    attention_bias = bool(config.get("attention_bias", False))
    moe = _moe_fields(config, name, model_type, n, i)
    gemma = model_type in ("gemma2", "gemma3_text")
    return ModelSpec(
        name=name,
        model_type=model_type,
        vocab_size=v,
        hidden_size=h,
        intermediate_size=i,
        num_hidden_layers=n,
        num_attention_heads=a,
        num_key_value_heads=kv,
        head_dim=d,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", model_type.startswith(("gemma", "gpt2")))),
        qkv_bias=model_type in ("qwen2", "qwen2_moe", "gpt2") or attention_bias,
        o_bias=model_type == "gpt2" or (model_type not in ("qwen2", "qwen2_moe") and attention_bias),
        mlp_bias=model_type == "gpt2" or bool(config.get("mlp_bias", False)),
        qk_norm=model_type in ("qwen3", "qwen3_moe", "gemma3_text"),
        norms_per_layer=4 if gemma else 2,
        norm_bias=model_type == "gpt2",
        mlp_gated=model_type != "gpt2",
        fused_qkv=model_type in ("phi3", "gpt2"),
        fused_gate_up=model_type == "phi3",
        position_embeddings=_whole(config, "n_positions", name) if model_type == "gpt2" else 0,
        **moe,
    )
