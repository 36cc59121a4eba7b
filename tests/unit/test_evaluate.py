"""Did it learn? The held-out split, the answer scores, the evaluation arguments (``train/evaluate.py``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from disttune.errors import UserError
from disttune.train import data, evaluate

EOS = 2  # an end-of-turn id for the hand-made sequences below
PAD = 0


def test_exact_match_and_per_token_accuracy_on_known_sequences():
    pairs = [
        ([5, 6, EOS, PAD, PAD], [5, 6, EOS]),  # right, then padding after the end mark: exact
        ([5, 7, EOS], [5, 6, EOS]),  # one token wrong: 2 of 3
        ([5, 6, 6], [5, 6, EOS]),  # right digits but never stops: not exact, 2 of 3
        ([9, 5, 6], [5, 6, EOS]),  # shifted by one: nothing at the same position
    ]
    scores = evaluate.score_answers(pairs, EOS)
    assert scores["examples"] == 4
    assert scores["exact"] == 1 and scores["exact_match"] == 0.25
    assert (scores["tokens_correct"], scores["tokens"]) == (1 * 3 + 2 + 2 + 0, 12)
    assert scores["token_accuracy"] == round(7 / 12, 4)


def test_a_longer_answer_than_the_reference_is_not_an_exact_match():
    scores = evaluate.score_answers([([5, 6, 6, EOS], [5, 6, EOS])], EOS)
    assert scores["exact"] == 0 and scores["tokens_correct"] == 2


def test_no_examples_scores_none_rather_than_zero():
    scores = evaluate.score_answers([], EOS)
    assert scores["exact_match"] is None and scores["token_accuracy"] is None


def test_heldout_questions_are_never_in_the_training_set_and_are_deterministic():
    train = data.builtin_examples(4000, seed=42)
    heldout = data.builtin_heldout(train, 64, seed=42)
    assert len(heldout) == 64
    asked = {example["messages"][0]["content"] for example in train}
    questions = [example["messages"][0]["content"] for example in heldout]
    assert not asked & set(questions)
    assert len(set(questions)) == 64
    assert heldout == data.builtin_heldout(train, 64, seed=42)
    assert heldout != data.builtin_heldout(train, 64, seed=43)
    # the training set is the one a run without a held-out split trains on
    assert train == data.builtin_examples(4000, seed=42)


def test_encode_heldout_splits_prompt_and_answer_through_the_chat_template():
    from disttune.train.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    record = {
        "messages": [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}]
    }
    [(prompt, reference)] = evaluate.encode_heldout([record], tokenizer)
    assert tokenizer.decode(prompt) == "<|user|>What is 2 + 3?<|end|><|assistant|>"
    assert tokenizer.decode(reference) == "5<|end|>"
    assert reference[-1] == tokenizer.eos_token_id


def test_batched_left_padded_generation_matches_one_prompt_at_a_time():
    import torch
    from transformers import LlamaForCausalLM

    from disttune.train.tiny import build_tiny_model_config, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(build_tiny_model_config(tokenizer)).eval()
    prompts = [tokenizer("What is 1 + 1?")["input_ids"], tokenizer("Sort the digits: 9312")["input_ids"]]
    batched = evaluate.greedy_answers(model, tokenizer, prompts, 6, 2, "cpu")
    alone = [evaluate.greedy_answers(model, tokenizer, [p], 6, 1, "cpu")[0] for p in prompts]
    assert [len(g) for g in batched] == [6, 6]
    assert [evaluate._through_eos(g, tokenizer.eos_token_id) for g in batched] == [
        evaluate._through_eos(g, tokenizer.eos_token_id) for g in alone
    ]


def test_a_fraction_holds_rows_out_of_training_the_same_way_every_time():
    from datasets import Dataset

    dataset = Dataset.from_list([{"text": f"row {i}"} for i in range(40)])
    train, held = data.split_for_eval(dataset, "0.1", "data.jsonl", seed=1)
    assert (len(train), len(held)) == (36, 4)
    assert not set(train["text"]) & set(held["text"])
    assert held["text"] == data.split_for_eval(dataset, "0.1", "data.jsonl", seed=1)[1]["text"]


@pytest.mark.parametrize("value", ["0", "1.5", "0.001"])
def test_a_fraction_that_holds_nothing_or_everything_is_refused(value):
    from datasets import Dataset

    dataset = Dataset.from_list([{"text": "x"}] * 10)
    with pytest.raises(UserError, match="between 0 and 1"):
        data.split_for_eval(dataset, value, "data.jsonl")


def test_a_split_name_for_a_local_file_is_refused_with_the_fix():
    from datasets import Dataset

    with pytest.raises(UserError, match="a local file has no named splits"):
        data.split_for_eval(Dataset.from_list([{"text": "x"}]), "test", "data.jsonl")


def _args(dataset="builtin", eval_split=None, heldout=64, strategy="no"):
    script = SimpleNamespace(dataset_name=dataset, eval_split=eval_split, heldout_examples=heldout)
    training = SimpleNamespace(eval_strategy=strategy, eval_on_start=False)
    return script, training


def test_evaluation_arguments_are_checked_and_evaluate_before_the_first_step():
    script, training = _args("data.jsonl", eval_split="0.05")
    evaluate.evaluation_settings(script, training, set())
    assert training.eval_on_start is True
    script, training = _args("data.jsonl", eval_split="0.05")
    evaluate.evaluation_settings(script, training, {"eval_on_start"})  # the user's own choice stays
    assert training.eval_on_start is False
    script, training = _args()  # the built-in answers need no evaluation loss
    evaluate.evaluation_settings(script, training, set())
    assert training.eval_on_start is False
    with pytest.raises(UserError, match="has its own held-out split"):
        evaluate.evaluation_settings(*_args(eval_split="test"), set())
    with pytest.raises(UserError, match="--eval_strategy steps needs an evaluation set"):
        evaluate.evaluation_settings(*_args("data.jsonl", strategy="steps"), set())
    with pytest.raises(UserError, match="needs an evaluation set.\n  fix: add --heldout_examples 64"):
        evaluate.evaluation_settings(*_args(heldout=0, strategy="steps"), set())


def test_the_callback_forces_an_evaluation_after_the_last_step_and_reports_first_and_last():
    callback = evaluate.HeldOutEvaluation([], eval_loss=True, describe_data="d.jsonl: 4 held-out examples")
    control = SimpleNamespace(should_evaluate=False)
    callback.on_step_end(None, SimpleNamespace(global_step=2, max_steps=3), control)
    assert control.should_evaluate is False
    callback.on_step_end(None, SimpleNamespace(global_step=3, max_steps=3), control)
    assert control.should_evaluate is True
    assert callback.summary() is None
    for step, loss in ((0, 2.5), (2, 1.9), (3, 1.25)):
        callback.on_evaluate(None, SimpleNamespace(global_step=step), control, metrics={"eval_loss": loss})
    summary = callback.summary()
    assert summary["before"] == {"step": 0, "eval_loss": 2.5}
    assert summary["after"] == {"step": 3, "eval_loss": 1.25}
    assert evaluate.describe_change(summary) == (
        "did it learn? eval loss 2.5000 -> 1.2500 (steps 0 -> 3, d.jsonl: 4 held-out examples)"
    )


def test_describe_change_names_both_answer_scores():
    summary = {
        "data": "builtin: 64 held-out examples",
        "before": {"step": 0, "exact_match": 0.0, "token_accuracy": 0.0065},
        "after": {"step": 80, "exact_match": 0.0625, "token_accuracy": 0.1484},
    }
    assert evaluate.describe_change(summary) == (
        "did it learn? held-out exact match 0.0% -> 6.2%, per-token accuracy 0.7% -> 14.8% "
        "(steps 0 -> 80, builtin: 64 held-out examples)"
    )
    assert evaluate.describe_change({**summary, "after": None}) is None
