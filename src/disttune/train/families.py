"""Tiny models of the families people fine-tune, built offline from their transformers configs.

Each preset is a real transformers architecture at a toy size (hidden 64, 2 layers; Llama is the built-in
``tiny`` preset), with random weights and the built-in character tokenizer (``tiny.build_tiny_tokenizer``),
saved as an ordinary HF folder. A run loads it with ``--model_name_or_path <folder>``, through the same
loading code as a downloaded model. The tests train every family under every shipped strategy (``tests/distributed/test_families.py``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from disttune.train.tiny import TINY_MODEL_CONFIG

# Shared toy sizes: 4 query heads of 16, 2 key/value heads (grouped-query attention where the family has it).
_ATTENTION = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}


@dataclass(frozen=True)
class Family:
    """One model family: its transformers config class, the toy-size settings, and what it exercises."""

    config_class: str  # a class exported by ``transformers``
    settings: dict = field(default_factory=dict)
    exercises: str = ""


FAMILIES: dict[str, Family] = {
    "llama": Family(
        "LlamaConfig",
        TINY_MODEL_CONFIG,  # the built-in preset (hidden 128, 4 layers)
        "untied embeddings, RMSNorm, rotary positions, GQA",
    ),
    "qwen2": Family(
        "Qwen2Config",
        {**_ATTENTION, "tie_word_embeddings": True},
        "tied embeddings, GQA, q/k/v projections with bias",
    ),
    "gemma2": Family(
        "Gemma2Config",
        {
            **_ATTENTION,
            "head_dim": 16,
            "tie_word_embeddings": True,
            "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0,
            "sliding_window": 32,
            "query_pre_attn_scalar": 16,
        },
        "tied embeddings, Gemma's (1 + weight) RMSNorm, logit soft-capping, sliding window, eager attention",
    ),
    "gpt2": Family(
        "GPT2Config",
        {
            "n_embd": 64,
            "n_layer": 2,
            "n_head": 4,
            "n_inner": 128,
            "n_positions": 512,
            "tie_word_embeddings": True,
        },
        "tied embeddings, learned positions, Conv1D layers, LayerNorm with bias",
    ),
    "mistral": Family(
        "MistralConfig",
        {**_ATTENTION, "tie_word_embeddings": False, "sliding_window": None},
        "untied embeddings, GQA (Mistral's layout)",
    ),
    "qwen2_moe": Family(
        "Qwen2MoeConfig",
        {
            **_ATTENTION,
            "tie_word_embeddings": False,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 64,
            "decoder_sparse_step": 1,
        },
        "mixture of experts: top-2 of 4 routed experts plus a shared expert per layer",
    ),
    "qwen3_moe": Family(
        "Qwen3MoeConfig",
        {
            **_ATTENTION,
            "head_dim": 16,
            "tie_word_embeddings": False,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "decoder_sparse_step": 1,
        },
        "mixture of experts (Qwen3): top-2 of 4 routed experts every layer, q/k norms, no shared expert",
    ),
    "mixtral": Family(
        "MixtralConfig",
        {**_ATTENTION, "tie_word_embeddings": False, "num_local_experts": 4, "num_experts_per_tok": 2},
        "mixture of experts (Mixtral): top-2 of 4 experts every layer, sliding-window-free GQA",
    ),
}


def build_family_model(name: str, tokenizer, seed: int = 0):
    """A randomly initialised ``AutoModelForCausalLM`` of family ``name`` with the tokenizer's vocabulary."""
    import torch
    import transformers

    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    config = getattr(transformers, FAMILIES[name].config_class)(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **FAMILIES[name].settings,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return transformers.AutoModelForCausalLM.from_config(config)
    finally:
        torch.random.set_rng_state(state)


def family_checkpoint(name: str, root: str | os.PathLike, seed: int = 0) -> Path:
    """A local HF folder (config, safetensors weights, tokenizer) of family ``name``; built once, then reused.

    Call it outside a process group (``save_pretrained`` writes weights on global rank 0 only).
    """
    from disttune.train.tiny import build_tiny_tokenizer

    root = Path(root)
    target = root / f"tiny-{name}-seed{seed}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    model = build_family_model(name, tokenizer, seed)
    staging = Path(tempfile.mkdtemp(prefix=f".tiny-{name}-", dir=root))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(target)
    except OSError:  # built meanwhile by another process: identical
        shutil.rmtree(staging, ignore_errors=True)
    return target
