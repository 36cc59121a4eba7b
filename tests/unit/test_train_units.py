"""Pure pieces of the training script: reconciliation, CPU fixes, data, tokenizer, plan text, save checks."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from disttune.errors import UserError
from disttune.train import data, reconcile, strategy
from disttune.train.main import _explicit_names, format_plan


def _args(**kw):
    return SimpleNamespace(**{"gradient_accumulation_steps": 1, "max_grad_norm": 1.0, **kw})


def test_config_values_apply_when_the_user_set_none():
    args = _args()
    env = {reconcile.GA_ENV: "4", reconcile.CLIP_ENV: "0.5"}
    notes = reconcile.reconcile_batch_settings(args, explicit=set(), environ=env, config_name="c.yaml")
    assert (args.gradient_accumulation_steps, args.max_grad_norm) == (4, 0.5)
    assert len(notes) == 2


def test_an_explicit_equal_value_is_fine():
    args = _args(gradient_accumulation_steps=4)
    reconcile.reconcile_batch_settings(args, {"gradient_accumulation_steps"}, {reconcile.GA_ENV: "4"}, "c.yaml")
    assert args.gradient_accumulation_steps == 4


def test_an_explicit_conflict_names_both_places_and_the_fix():
    args = _args(gradient_accumulation_steps=8)
    with pytest.raises(UserError) as err:
        reconcile.reconcile_batch_settings(args, {"gradient_accumulation_steps"}, {reconcile.GA_ENV: "2"}, "z2.yaml")
    message = str(err.value)
    assert "gradient_accumulation_steps is 8 on the command line" in message
    assert "deepspeed_config.gradient_accumulation_steps is 2 in z2.yaml" in message
    assert "fix:" in message


def test_clipping_conflict_and_auto_values():
    args = _args(max_grad_norm=0.3)
    with pytest.raises(UserError, match="max_grad_norm is 0.3 on the command line"):
        reconcile.reconcile_batch_settings(args, {"max_grad_norm"}, {reconcile.CLIP_ENV: "1.0"}, "c.yaml")
    args = _args()
    assert reconcile.reconcile_batch_settings(args, set(), {reconcile.GA_ENV: "auto", reconcile.CLIP_ENV: "none"}) == []
    assert args.gradient_accumulation_steps == 1


def test_fp16_falls_back_to_bf16_only_without_gpu():
    env = {reconcile.MP_ENV: "fp16"}
    assert reconcile.cpu_mixed_precision_fallback(True, env) is None and env[reconcile.MP_ENV] == "fp16"
    assert "bf16" in reconcile.cpu_mixed_precision_fallback(False, env)
    assert env[reconcile.MP_ENV] == "bf16"
    assert reconcile.cpu_mixed_precision_fallback(False, {reconcile.MP_ENV: "no"}) is None


def test_cpu_distributed_defaults_per_strategy():
    launched = {"LOCAL_RANK": "0", "WORLD_SIZE": "2"}
    ddp = dict(launched)
    assert strategy.cpu_distributed_defaults(False, ddp)[0] == {} and ddp["ACCELERATE_USE_CPU"] == "true"
    ds = {**launched, "ACCELERATE_USE_DEEPSPEED": "true"}
    assert strategy.cpu_distributed_defaults(False, ds)[0] == {"ddp_backend": "gloo"}
    assert "ACCELERATE_USE_CPU" not in ds
    fsdp = {**launched, "ACCELERATE_USE_FSDP": "true"}
    assert strategy.cpu_distributed_defaults(False, fsdp)[0] == {"ddp_backend": "gloo"}
    assert strategy.cpu_distributed_defaults(True, dict(launched)) == ({}, [])  # GPUs: accelerate knows best
    assert strategy.cpu_distributed_defaults(False, {}) == ({}, [])  # a plain single process


def test_deepspeed_auto_sizes_fill_only_missing_keys():
    plugin = SimpleNamespace(deepspeed_config={"zero_optimization": {"stage": 3, "reduce_bucket_size": 5}})
    filled = strategy.deepspeed_auto_sizes(SimpleNamespace(deepspeed_plugin=plugin))
    assert filled == ["stage3_prefetch_bucket_size", "stage3_param_persistence_threshold"]
    assert plugin.deepspeed_config["zero_optimization"]["reduce_bucket_size"] == 5
    assert strategy.deepspeed_auto_sizes(SimpleNamespace(deepspeed_plugin=None)) == []


def test_builtin_data_is_deterministic_and_its_answers_are_right():
    first, again = data.builtin_examples(200, seed=3), data.builtin_examples(200, seed=3)
    assert first == again and first != data.builtin_examples(200, seed=4)
    checked = 0
    for example in first:
        question, answer = (m["content"] for m in example["messages"])
        if match := re.fullmatch(r"What is (\d+) ([+*-]) (\d+)\?", question):
            assert int(answer) == eval(f"{match[1]}{match[2]}{match[3]}")  # noqa: S307 - digits and one operator
            checked += 1
        elif question.startswith("Reverse the word: "):
            assert answer == question.removeprefix("Reverse the word: ")[::-1]
            checked += 1
        elif question.startswith("Sort the digits: "):
            assert answer == "".join(sorted(question.removeprefix("Sort the digits: ")))
            checked += 1
    assert checked > 50


def test_detect_format_and_the_error_naming_columns():
    assert data.detect_format(["messages", "id"], "x") == "messages"
    assert data.detect_format(["prompt", "completion"], "x") == "prompt_completion"
    assert data.detect_format(["text"], "x") == "text"
    with pytest.raises(UserError, match=r"no supported columns found \(columns: a, b\)"):
        data.detect_format(["b", "a"], "dataset f.jsonl")


def test_missing_data_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        data.load_train_dataset(str(tmp_path / "nope.jsonl"))


def test_tiny_tokenizer_round_trips_and_masks_the_assistant_turn():
    from disttune.train.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    text = "What is 12 * 3?\nReverse: abc!"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    out = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "42"}],
        tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
    )
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(masked) == "42<|end|>"


def test_tiny_checkpoint_is_built_once_and_identical_per_seed(tmp_path):
    from disttune.train.tiny import tiny_checkpoint

    first = tiny_checkpoint(7, tmp_path)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert tiny_checkpoint(7, tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    other = tiny_checkpoint(8, tmp_path)
    assert (first / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()


def test_explicit_names_come_from_the_command_line_and_the_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("gradient_accumulation_steps: 4\nlearning_rate: 0.1\n")
    names = _explicit_names(["--config", str(recipe), "--max_grad_norm=0.5"])
    assert {"gradient_accumulation_steps", "learning_rate", "max_grad_norm"} <= names
    with pytest.raises(UserError, match="file not found"):
        _explicit_names(["--config", str(tmp_path / "missing.yaml")])
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(UserError, match="must be a mapping"):
        _explicit_names(["--config", str(tmp_path / "list.yaml")])


def test_plan_text_shows_the_global_batch_formula():
    info = {"distributed_type": "DEEPSPEED", "zero_stage": 3, "world_size": 4, "device": "cuda:0", "mixed_precision": "bf16"}
    args = SimpleNamespace(
        per_device_train_batch_size=4, gradient_accumulation_steps=2, max_length=512, learning_rate=2e-5, max_steps=100,
        num_train_epochs=3,
    )
    text = format_plan(info, args, tokens_per_step=32 * 512)
    assert "DEEPSPEED ZeRO-3" in text
    assert "global batch            32 = 4 x 4 x 2" in text
    assert "<= 16384" in text


def test_an_unreachable_hub_dataset_is_a_user_error(monkeypatch):
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'org/name' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)  # what an offline machine gets, without the wait
    with pytest.raises(UserError, match=r"--dataset_name org/name: cannot load it \(ConnectionError: Couldn't reach"):
        data.load_train_dataset("org/name")
