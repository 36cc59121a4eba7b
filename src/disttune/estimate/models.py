"""Decoder architectures as config fields, exact parameter counts, and ``config.json`` reading.

Counts follow the transformers modules for Llama / Mistral / Qwen2 / Qwen3 (``modeling_*.py``):
embeddings V*h; per layer q h*(a*d), k and v h*(kv*d) each, o (a*d)*h, gate/up h*i each, down i*h,
two RMSNorms 2h (Qwen3 adds q_norm/k_norm 2d); biases on q,k,v for Qwen2, on q,k,v,o with Llama's
``attention_bias``; a final norm h; lm_head V*h unless ``tie_word_embeddings``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from disttune.errors import UserError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelSpec:
    """The config.json fields that decide parameter count and activation size."""

    name: str
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool
    qkv_bias: bool = False  # Qwen2: always; Llama: attention_bias
    o_bias: bool = False  # Llama/Qwen3: attention_bias
    mlp_bias: bool = False  # Llama: mlp_bias
    qk_norm: bool = False  # Qwen3: RMSNorm(head_dim) on q and k

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim


@dataclass(frozen=True)
class ParamCount:
    """Parameter count split the way the memory model needs it."""

    total: int  # as ``sum(p.numel() for p in model.parameters())`` (a tied lm_head counted once)
    embedding: int
    lm_head: int  # 0 when tied
    per_layer: int
    largest_tensor: int  # numel of the biggest single weight (ZeRO-3 gathers module by module)
    small_tensors: int  # numel in tensors under DeepSpeed's 1e5 persistence threshold (norms, biases)


def layer_tensors(spec: ModelSpec) -> list[int]:
    """numel of every parameter tensor of one decoder layer."""
    h, i, q, kv = spec.hidden_size, spec.intermediate_size, spec.q_dim, spec.kv_dim
    out = [h * q, h * kv, h * kv, q * h, h * i, h * i, i * h, h, h]
    if spec.qkv_bias:
        out += [q, kv, kv]
    if spec.o_bias:
        out.append(h)
    if spec.mlp_bias:
        out += [i, i, h]
    if spec.qk_norm:
        out += [spec.head_dim, spec.head_dim]
    return out


def count_params(spec: ModelSpec, persistence_threshold: int = 100_000) -> ParamCount:
    """Exact parameter count of ``spec`` (see the module docstring for the terms)."""
    layer = layer_tensors(spec)
    embed = spec.vocab_size * spec.hidden_size
    lm_head = 0 if spec.tie_word_embeddings else embed
    per_layer = sum(layer)
    total = embed + spec.num_hidden_layers * per_layer + spec.hidden_size + lm_head
    small = spec.num_hidden_layers * sum(n for n in layer if n <= persistence_threshold)
    small += spec.hidden_size if spec.hidden_size <= persistence_threshold else 0
    small += embed if embed <= persistence_threshold else 0
    small += lm_head if 0 < lm_head <= persistence_threshold else 0
    return ParamCount(total, embed, lm_head, per_layer, max(max(layer), embed), small)


def lora_params(spec: ModelSpec, r: int, targets: tuple[str, ...] = LORA_TARGETS) -> int:
    """Trainable LoRA parameters: r x (in + out) per adapted matrix (A is r x in, B is out x r)."""
    h, i, q, kv = spec.hidden_size, spec.intermediate_size, spec.q_dim, spec.kv_dim
    shapes = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
              "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    return spec.num_hidden_layers * sum(r * sum(shapes[t]) for t in targets)


def _spec(name, model_type, v, h, i, n, a, kv, tie, d=None) -> ModelSpec:
    qwen2 = model_type == "qwen2"
    return ModelSpec(name, model_type, v, h, i, n, a, kv, d or h // a, tie, qkv_bias=qwen2,
                     qk_norm=model_type == "qwen3")


# Shapes from each model's published config.json on the Hugging Face Hub.
PRESETS: dict[str, ModelSpec] = {s.name: s for s in [
    _spec("meta-llama/Llama-3.2-1B", "llama", 128256, 2048, 8192, 16, 32, 8, True),
    _spec("meta-llama/Llama-3.2-3B", "llama", 128256, 3072, 8192, 28, 24, 8, True),
    _spec("meta-llama/Llama-3.1-8B", "llama", 128256, 4096, 14336, 32, 32, 8, False),
    _spec("meta-llama/Llama-3.1-70B", "llama", 128256, 8192, 28672, 80, 64, 8, False),
    _spec("mistralai/Mistral-7B-v0.3", "mistral", 32768, 4096, 14336, 32, 32, 8, False),
    _spec("Qwen/Qwen2.5-0.5B", "qwen2", 151936, 896, 4864, 24, 14, 2, True),
    _spec("Qwen/Qwen2.5-1.5B", "qwen2", 151936, 1536, 8960, 28, 12, 2, True),
    _spec("Qwen/Qwen2.5-3B", "qwen2", 151936, 2048, 11008, 36, 16, 2, True),
    _spec("Qwen/Qwen2.5-7B", "qwen2", 152064, 3584, 18944, 28, 28, 4, False),
    _spec("Qwen/Qwen2.5-14B", "qwen2", 152064, 5120, 13824, 48, 40, 8, False),
    _spec("Qwen/Qwen2.5-32B", "qwen2", 152064, 5120, 27648, 64, 40, 8, False),
    _spec("Qwen/Qwen2.5-72B", "qwen2", 152064, 8192, 29568, 80, 64, 8, False),
    _spec("Qwen/Qwen3-0.6B", "qwen3", 151936, 1024, 3072, 28, 16, 8, True, d=128),
    _spec("Qwen/Qwen3-8B", "qwen3", 151936, 4096, 12288, 36, 32, 8, False, d=128),
]}


def _preset_key(name: str) -> str | None:
    """Match ``Qwen/Qwen2.5-7B``, ``qwen2.5-7b`` or ``Qwen2.5-7B-Instruct`` (same shapes) to a preset."""
    want = name.lower().removesuffix("-instruct")
    for key in PRESETS:
        if want in (key.lower(), key.split("/")[1].lower()):
            return key
    return None


def spec_from_config(config: dict, name: str = "config.json") -> ModelSpec:
    """A ``ModelSpec`` from a parsed transformers ``config.json`` (Llama/Mistral/Qwen2/Qwen3 decoders)."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(f"{name}: model_type {model_type!r} is not supported; estimate knows "
                        f"{', '.join(SUPPORTED_MODEL_TYPES)}. Use --num_params N (with --hidden_size and "
                        f"--num_hidden_layers for activations) for other models.")
    try:
        h, a = int(config["hidden_size"]), int(config["num_attention_heads"])
        attention_bias = bool(config.get("attention_bias", False))
        return ModelSpec(
            name=name, model_type=model_type, vocab_size=int(config["vocab_size"]), hidden_size=h,
            intermediate_size=int(config["intermediate_size"]), num_hidden_layers=int(config["num_hidden_layers"]),
            num_attention_heads=a, num_key_value_heads=int(config.get("num_key_value_heads") or a),
            head_dim=int(config.get("head_dim") or h // a),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=model_type == "qwen2" or (model_type in ("llama", "qwen3") and attention_bias),
            o_bias=model_type in ("llama", "qwen3") and attention_bias,
            mlp_bias=model_type == "llama" and bool(config.get("mlp_bias", False)),
            qk_norm=model_type == "qwen3")
    except KeyError as exc:
        raise UserError(f"{name}: missing key {exc.args[0]!r}; is this a transformers config.json?") from None
    except (TypeError, ValueError) as exc:
        raise UserError(f"{name}: a shape field is not a number ({exc}).") from None


def resolve_model(name_or_path: str) -> ModelSpec:
    """A preset name, a ``config.json`` file, or a folder holding one -> ``ModelSpec``."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise UserError(f"--model {name_or_path}: the folder has no config.json; point at a model folder "
                            f"or a config.json file, or use a preset (disttune estimate --list_models).")
    if path.is_file():
        try:
            config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"--model {path}: cannot read it as JSON ({exc}).") from None
        if not isinstance(config, dict):
            raise UserError(f"--model {path}: expected a JSON object (a transformers config.json).")
        return spec_from_config(config, str(path))
    key = _preset_key(name_or_path)
    if key is not None:
        return PRESETS[key]
    if "/" in name_or_path and name_or_path.count("/") > 1 or name_or_path.endswith(".json"):
        raise UserError(f"--model {name_or_path}: no such file or folder.")
    raise UserError(f"--model {name_or_path}: not a file, folder or known model. Known models: "
                    f"{', '.join(PRESETS)}. Or pass a config.json path, or --num_params N.")
