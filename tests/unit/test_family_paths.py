"""Every model family through the paths that run the model outside the training step, in one process.

The family matrix (tests/distributed/test_families.py) proves training, the held-out answers and the
final save per family and strategy with launched processes; these are the same paths, per family, at unit
speed: greedy held-out answers with the model configured as TRL trains it (router logits on for MoE
models), the final check (``check_final_model``), and ``--merge_lora`` (adapter saved, merged from the base
on disk, checked).
"""

from __future__ import annotations

import pytest

from disttune.train.families import FAMILIES

MOE = ("qwen2_moe", "qwen3_moe", "mixtral")


@pytest.fixture(scope="module")
def tokenizer():
    from disttune.train.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def heldout(tokenizer):
    from disttune.train.data import builtin_examples, builtin_heldout
    from disttune.train.evaluate import encode_heldout

    return encode_heldout(builtin_heldout(builtin_examples(seed=42)[:200], 6, seed=42), tokenizer)


def _answers(model, tokenizer, heldout):
    from disttune.train.evaluate import greedy_answers, without_router_logits

    prompts = [p for p, _ in heldout]
    with without_router_logits(model):
        return greedy_answers(model, tokenizer, prompts, max(len(r) for _, r in heldout), 8, "cpu")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_answers_held_out_questions_as_trl_configures_it(family, tokenizer, heldout):
    from disttune.train.families import build_family_model

    model = build_family_model(family, tokenizer, seed=2)
    if hasattr(model.config, "output_router_logits"):
        model.config.output_router_logits = True  # what TRL's SFTTrainer sets for a MoE model
    answers = _answers(model.eval(), tokenizer, heldout)
    assert len(answers) == len(heldout) and all(len(a) >= 1 for a in answers)
    if family in MOE:
        assert model.config.output_router_logits is True  # restored for training


def test_without_the_fix_a_moe_model_fails_to_generate(tokenizer, heldout):
    """The crash the fix is for (transformers' load-balancing loss during cached generation)."""
    import torch

    from disttune.train.evaluate import greedy_answers
    from disttune.train.families import build_family_model

    model = build_family_model("qwen3_moe", tokenizer, seed=2).eval()
    model.config.output_router_logits = True
    prompts = [p for p, _ in heldout]
    with pytest.raises(RuntimeError, match="must match the size"), torch.no_grad():
        greedy_answers(model, tokenizer, prompts, 4, 8, "cpu")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_familys_final_model_and_merged_lora_load_back(family, tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from disttune.train.families import family_checkpoint
    from disttune.train.save import (
        check_adapter,
        check_final_model,
        save_merged_lora,
        tied_weight_keys,
        without_tied_copies,
    )

    base = family_checkpoint(family, tmp_path / "models", seed=2)
    model = AutoModelForCausalLM.from_pretrained(base)
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    model.save_pretrained(tmp_path / "final", state_dict=without_tied_copies(state, tied_weight_keys(model)))
    check_final_model(tmp_path / "final", state)

    targets = "all-linear" if family != "gpt2" else ["c_attn"]
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=targets, init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    check_adapter(tmp_path / "adapter", get_peft_model_state_dict(peft_model))
    merged = save_merged_lora(str(base), tmp_path / "adapter", tmp_path / "merged")
    assert (merged / "config.json").is_file()
