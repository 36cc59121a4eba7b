"""Model presets: shapes from each model's published ``config.json`` on the Hugging Face Hub, found by name.

A name matches with or without the organisation, in any case, and without the variant words that do not
change the shapes (``-Instruct``, ``-it``, ``-chat``, ``-hf``, ``-Base``, ``-pt``): ``Qwen2.5-7B-Instruct``,
``mistralai/Mistral-7B-Instruct-v0.3`` and ``gemma-2-9b-it`` all resolve. ``resolve_model`` takes what
``--model`` says: a preset name, a ``config.json`` file or a model folder holding one.
"""

from __future__ import annotations

import json
from pathlib import Path

from disttune.errors import UserError
from disttune.estimate.models import ModelSpec, siglip_tensors, spec_from_config


def _spec(name, model_type, v, h, i, n, a, kv, tie, d=None, **extra) -> ModelSpec:
    gemma = model_type in ("gemma2", "gemma3_text")
    return ModelSpec(
        name,
        model_type,
        v,
        h,
        i,
        n,
        a,
        kv,
        d or h // a,
        tie,
        qkv_bias=model_type in ("qwen2", "qwen2_moe"),
        qk_norm=model_type in ("qwen3", "qwen3_moe", "gemma3_text"),
        norms_per_layer=4 if gemma else 2,
        fused_qkv=model_type == "phi3",
        fused_gate_up=model_type == "phi3",
        **extra,
    )


# Gemma 3 4B-27B's vision_config (the same SigLIP encoder for the three): AutoModelForCausalLM loads it with
# the decoder, so its 0.42B parameters are held and trained too
GEMMA3_VISION = dict(
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=27,
    image_size=896,
    patch_size=14,
    vision_use_head=False,
)


def _gemma3(name, h, i, n, a, kv, d) -> ModelSpec:
    vision = siglip_tensors(GEMMA3_VISION, h, name)
    return _spec(name, "gemma3_text", 262208, h, i, n, a, kv, True, d=d, extra_tensors=vision)


def _moe(e, k, moe_i, n, shared=0):
    return dict(
        num_experts=e,
        num_experts_per_tok=k,
        moe_intermediate_size=moe_i,
        num_moe_layers=n,
        shared_expert_intermediate_size=shared,
        shared_expert_gate=bool(shared),
    )


PRESETS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        _spec("meta-llama/Llama-2-7b-hf", "llama", 32000, 4096, 11008, 32, 32, 32, False),
        _spec("meta-llama/Llama-2-13b-hf", "llama", 32000, 5120, 13824, 40, 40, 40, False),
        _spec("meta-llama/Llama-2-70b-hf", "llama", 32000, 8192, 28672, 80, 64, 8, False),
        _spec("meta-llama/Meta-Llama-3-8B", "llama", 128256, 4096, 14336, 32, 32, 8, False),
        _spec("meta-llama/Meta-Llama-3-70B", "llama", 128256, 8192, 28672, 80, 64, 8, False),
        _spec("meta-llama/Llama-3.1-8B", "llama", 128256, 4096, 14336, 32, 32, 8, False),
        _spec("meta-llama/Llama-3.1-70B", "llama", 128256, 8192, 28672, 80, 64, 8, False),
        _spec("meta-llama/Llama-3.2-1B", "llama", 128256, 2048, 8192, 16, 32, 8, True),
        _spec("meta-llama/Llama-3.2-3B", "llama", 128256, 3072, 8192, 28, 24, 8, True),
        _spec("meta-llama/Llama-3.3-70B-Instruct", "llama", 128256, 8192, 28672, 80, 64, 8, False),
        _spec("mistralai/Mistral-7B-v0.3", "mistral", 32768, 4096, 14336, 32, 32, 8, False),
        _spec(
            "mistralai/Mixtral-8x7B-v0.1",
            "mixtral",
            32000,
            4096,
            14336,
            32,
            32,
            8,
            False,
            **_moe(8, 2, 14336, 32),
        ),
        _spec("google/gemma-2-2b", "gemma2", 256000, 2304, 9216, 26, 8, 4, True, d=256),
        _spec("google/gemma-2-9b", "gemma2", 256000, 3584, 14336, 42, 16, 8, True, d=256),
        _spec("google/gemma-2-27b", "gemma2", 256000, 4608, 36864, 46, 32, 16, True, d=128),
        _spec("google/gemma-3-1b-pt", "gemma3_text", 262144, 1152, 6912, 26, 4, 1, True, d=256),
        _gemma3("google/gemma-3-4b-pt", 2560, 10240, 34, 8, 4, 256),
        _gemma3("google/gemma-3-12b-pt", 3840, 15360, 48, 16, 8, 256),
        _gemma3("google/gemma-3-27b-pt", 5376, 21504, 62, 32, 16, 128),
        _spec("microsoft/Phi-3-mini-4k-instruct", "phi3", 32064, 3072, 8192, 32, 32, 32, False),
        _spec("microsoft/Phi-3-medium-4k-instruct", "phi3", 32064, 5120, 17920, 40, 40, 10, False),
        _spec("microsoft/phi-4", "phi3", 100352, 5120, 17920, 40, 40, 10, False),
        _spec("Qwen/Qwen2.5-0.5B", "qwen2", 151936, 896, 4864, 24, 14, 2, True),
        _spec("Qwen/Qwen2.5-1.5B", "qwen2", 151936, 1536, 8960, 28, 12, 2, True),
        _spec("Qwen/Qwen2.5-3B", "qwen2", 151936, 2048, 11008, 36, 16, 2, True),
        _spec("Qwen/Qwen2.5-7B", "qwen2", 152064, 3584, 18944, 28, 28, 4, False),
        _spec("Qwen/Qwen2.5-14B", "qwen2", 152064, 5120, 13824, 48, 40, 8, False),
        _spec("Qwen/Qwen2.5-32B", "qwen2", 152064, 5120, 27648, 64, 40, 8, False),
        _spec("Qwen/Qwen2.5-72B", "qwen2", 152064, 8192, 29568, 80, 64, 8, False),
        _spec("Qwen/Qwen3-0.6B", "qwen3", 151936, 1024, 3072, 28, 16, 8, True, d=128),
        _spec("Qwen/Qwen3-1.7B", "qwen3", 151936, 2048, 6144, 28, 16, 8, True, d=128),
        _spec("Qwen/Qwen3-4B", "qwen3", 151936, 2560, 9728, 36, 32, 8, True, d=128),
        _spec("Qwen/Qwen3-8B", "qwen3", 151936, 4096, 12288, 36, 32, 8, False, d=128),
        _spec("Qwen/Qwen3-14B", "qwen3", 151936, 5120, 17408, 40, 40, 8, False, d=128),
        _spec("Qwen/Qwen3-32B", "qwen3", 151936, 5120, 25600, 64, 64, 8, False, d=128),
        _spec(
            "Qwen/Qwen3-30B-A3B",
            "qwen3_moe",
            151936,
            2048,
            6144,
            48,
            32,
            4,
            False,
            d=128,
            **_moe(128, 8, 768, 48),
        ),
        _spec(
            "Qwen/Qwen3-235B-A22B",
            "qwen3_moe",
            151936,
            4096,
            12288,
            94,
            64,
            4,
            False,
            d=128,
            **_moe(128, 8, 1536, 94),
        ),
    ]
}

VARIANT_WORDS = {"instruct", "it", "chat", "hf", "base", "pt"}


def normalise(name: str) -> str:
    """``mistralai/Mistral-7B-Instruct-v0.3`` -> ``mistral-7b-v0.3``: no organisation, case or variant words."""
    short = name.strip().rstrip("/").split("/")[-1].lower()
    return "-".join(part for part in short.split("-") if part not in VARIANT_WORDS)


_BY_NAME = {normalise(key): key for key in PRESETS}


def preset_key(name: str) -> str | None:
    """The ``PRESETS`` key ``name`` refers to, or None."""
    if name in PRESETS:
        return name
    return _BY_NAME.get(normalise(name))


def resolve_model(name_or_path: str) -> ModelSpec:
    """A preset name, a ``config.json`` file, or a folder holding one -> ``ModelSpec``."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise UserError(
                f"--model {name_or_path}: the folder has no config.json; point at a model folder "
                f"or a config.json file, or use a preset (disttune estimate --list_models)."
            )
    if path.is_file():
        try:
            config = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"--model {path}: cannot read it as JSON ({exc}).") from None
        if not isinstance(config, dict):
            raise UserError(f"--model {path}: expected a JSON object (a transformers config.json).")
        return spec_from_config(config, str(path))
    key = preset_key(name_or_path)
    if key is not None:
        return PRESETS[key]
    if "/" in name_or_path and name_or_path.count("/") > 1 or name_or_path.endswith(".json"):
        raise UserError(f"--model {name_or_path}: no such file or folder.")
    raise UserError(
        f"--model {name_or_path}: not a file, folder or known model. Known models: "
        f"{', '.join(PRESETS)}. Or pass a config.json path, or --num_params N."
    )
