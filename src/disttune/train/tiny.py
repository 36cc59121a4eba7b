"""The built-in ``tiny`` preset: a small Llama-architecture model and a character tokenizer.

Both are built locally (random weights from a config, a fixed character vocabulary), so the default run
needs no download. The size is chosen so that the default run shows a clearly falling loss on a laptop
CPU in about a minute.
"""

from __future__ import annotations

import os
import shutil
import string
import tempfile
from pathlib import Path

TINY_NAME = "tiny"

# Special tokens first so their ids are stable: pad=0, bos=1, eos=2, unk=3.
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHARACTERS = list(string.printable)  # digits, letters, punctuation, whitespace: 100 characters

# A chat template with {% generation %} markers, so TRL can compute the loss on assistant turns only.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}"
    "{% else %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

TINY_MODEL_CONFIG = {
    "hidden_size": 128,
    "intermediate_size": 352,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}


def build_tiny_tokenizer():
    """A character-level ``PreTrainedTokenizerFast`` with a chat template; no download, no training."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|end|>",
        unk_token="<unk>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
        model_max_length=TINY_MODEL_CONFIG["max_position_embeddings"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model_config(tokenizer):
    """The ``LlamaConfig`` of the tiny preset, with the tokenizer's vocabulary and special ids."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **TINY_MODEL_CONFIG,
    )


def tiny_checkpoint(seed: int, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local HF checkpoint of the tiny preset with seed-determined random weights; built once, then reused.

    Every strategy then loads the very same weights through ``from_pretrained`` (the real loading path,
    which also handles ZeRO-3's sharded construction), instead of initialising them differently under
    ``deepspeed.zero.Init``. Safe when several ranks build it at once: each writes a private folder and
    renames it into place; the loser of the race drops its copy.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    root = Path(cache_dir or os.environ.get("DISTTUNE_CACHE", Path.home() / ".cache" / "disttune"))
    target = root / f"tiny-llama-seed{seed}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(build_tiny_model_config(tokenizer))  # plain constructor: never zero.Init
    torch.random.set_rng_state(generator_state)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=root))
    # Written by hand: inside a process group, save_pretrained writes weights on global rank 0 only.
    model.config.save_pretrained(staging)
    save_file(model.state_dict(), str(staging / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(target)
    except OSError:  # another rank finished first: its copy is identical
        shutil.rmtree(staging, ignore_errors=True)
    return target
