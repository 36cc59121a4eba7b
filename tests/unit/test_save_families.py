"""The family presets the save and strategy tests train, and the MoE detection that ZeRO-3 relies on."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tokenizer():
    from disttune.train.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.mark.parametrize(
    ("family", "architecture", "tied"),
    [
        ("llama", "LlamaForCausalLM", False),
        ("qwen2", "Qwen2ForCausalLM", True),
        ("gemma2", "Gemma2ForCausalLM", True),
        ("gpt2", "GPT2LMHeadModel", True),
        ("mistral", "MistralForCausalLM", False),
        ("qwen2_moe", "Qwen2MoeForCausalLM", False),
    ],
)
def test_each_family_is_the_real_architecture_with_the_builtin_vocabulary(
    tokenizer, family, architecture, tied
):
    from disttune.train.families import build_family_model

    model = build_family_model(family, tokenizer)
    assert type(model).__name__ == architecture
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert (model.get_input_embeddings().weight is model.get_output_embeddings().weight) == tied


def test_gemma2_soft_caps_and_qwen2_has_qkv_bias(tokenizer):
    from disttune.train.families import build_family_model

    gemma = build_family_model("gemma2", tokenizer)
    assert gemma.config.final_logit_softcapping == 30.0 and gemma.config.attn_logit_softcapping == 50.0
    assert gemma.config._attn_implementation == "eager"  # sdpa cannot soft-cap
    qwen = build_family_model("qwen2", tokenizer)
    assert qwen.model.layers[0].self_attn.q_proj.bias is not None


def test_same_seed_same_weights_and_the_rng_is_left_alone(tokenizer):
    import torch

    from disttune.train.families import build_family_model

    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = build_family_model("gpt2", tokenizer, seed=1).state_dict()
    assert torch.equal(torch.rand(1), before)  # the caller's generator continues where it was
    second = build_family_model("gpt2", tokenizer, seed=1).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_family_checkpoint_loads_with_from_pretrained(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from disttune.train.families import family_checkpoint

    folder = family_checkpoint("qwen2", tmp_path)
    assert family_checkpoint("qwen2", tmp_path) == folder  # built once
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert AutoTokenizer.from_pretrained(folder).chat_template


def test_sparse_moe_blocks_are_found_by_their_experts(tokenizer):
    from disttune.train.distributed import sparse_moe_blocks, zero3_moe_leaf_modules
    from disttune.train.families import build_family_model

    moe = build_family_model("qwen2_moe", tokenizer)
    assert sparse_moe_blocks(moe) == ["Qwen2MoeSparseMoeBlock"]
    assert sparse_moe_blocks(build_family_model("mistral", tokenizer)) == []
    assert zero3_moe_leaf_modules(moe) is None  # not under ZeRO-3: nothing marked
    assert not any(getattr(module, "_z3_leaf", False) for module in moe.modules())


def test_unknown_family_is_refused(tokenizer):
    from disttune.train.families import build_family_model

    with pytest.raises(ValueError, match="unknown model family 'phi'; known: llama, qwen2"):
        build_family_model("phi", tokenizer)


def test_under_zero3_every_moe_block_becomes_a_leaf_module_with_a_note(tokenizer, monkeypatch):
    import transformers.integrations

    from disttune.train.distributed import zero3_moe_leaf_modules
    from disttune.train.families import build_family_model

    moe, dense = build_family_model("qwen2_moe", tokenizer), build_family_model("llama", tokenizer)
    # Built first: with ZeRO-3 reported on, from_config would construct under zero.Init.
    monkeypatch.setattr(transformers.integrations, "is_deepspeed_zero3_enabled", lambda: True)
    note = zero3_moe_leaf_modules(moe)
    leaves = [type(m).__name__ for m in moe.modules() if getattr(m, "_z3_leaf", False)]
    assert leaves == ["Qwen2MoeSparseMoeBlock"] * 2  # one per layer, nothing else
    assert note.startswith(
        "ZeRO-3: 2 mixture-of-experts blocks (Qwen2MoeSparseMoeBlock) are DeepSpeed leaf modules"
    )
    assert zero3_moe_leaf_modules(dense) is None  # dense: nothing to do
