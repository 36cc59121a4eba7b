"""Pure pieces of the training script: reconciliation, CPU fixes, data, tokenizer, plan text, save checks."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from disttune.errors import UserError
from disttune.train import data, distributed, reconcile
from disttune.train.args import explicit_names
from disttune.train.settings import Settings, batch_plan, describe_checkpointing, format_plan


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
    reconcile.reconcile_batch_settings(
        args, {"gradient_accumulation_steps"}, {reconcile.GA_ENV: "4"}, "c.yaml"
    )
    assert args.gradient_accumulation_steps == 4


def test_an_explicit_conflict_names_both_places_and_the_fix():
    args = _args(gradient_accumulation_steps=8)
    with pytest.raises(UserError) as err:
        reconcile.reconcile_batch_settings(
            args, {"gradient_accumulation_steps"}, {reconcile.GA_ENV: "2"}, "z2.yaml"
        )
    message = str(err.value)
    assert "gradient_accumulation_steps is 8 on the command line" in message
    assert "deepspeed_config.gradient_accumulation_steps is 2 in z2.yaml" in message
    assert "fix:" in message


def test_clipping_conflict_and_auto_values():
    args = _args(max_grad_norm=0.3)
    with pytest.raises(UserError, match="max_grad_norm is 0.3 on the command line"):
        reconcile.reconcile_batch_settings(args, {"max_grad_norm"}, {reconcile.CLIP_ENV: "1.0"}, "c.yaml")
    args = _args()
    assert (
        reconcile.reconcile_batch_settings(
            args, set(), {reconcile.GA_ENV: "auto", reconcile.CLIP_ENV: "none"}
        )
        == []
    )
    assert args.gradient_accumulation_steps == 1


def test_a_deepspeed_jsons_batch_values_apply_and_conflicts_name_the_json(tmp_path):
    """With a deepspeed_config_file, the JSON's accumulation, clipping and micro batch are adopted (accelerate
    exports none of them; the Trainer stops on any that differs from its arguments); "auto" leaves ours."""
    path = tmp_path / "ds.json"
    path.write_text(
        json.dumps(
            {
                "train_micro_batch_size_per_gpu": 4,
                "gradient_accumulation_steps": 2,
                "gradient_clipping": "auto",
                "zero_optimization": {"stage": 2},
            }
        )
    )
    env = {reconcile.DS_ENV: "true", reconcile.DS_CONFIG_ENV: str(path)}
    args = _args(per_device_train_batch_size=16)
    notes = reconcile.reconcile_batch_settings(args, set(), env)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.max_grad_norm) == (
        4,
        2,
        1.0,
    )
    assert notes == [
        f"gradient_accumulation_steps = 2 (from gradient_accumulation_steps in {path})",
        f"per_device_train_batch_size = 4 (from train_micro_batch_size_per_gpu in {path})",
    ]
    args = _args(per_device_train_batch_size=8)
    with pytest.raises(UserError) as err:
        reconcile.reconcile_batch_settings(args, {"per_device_train_batch_size"}, env)
    message = str(err.value)
    assert (
        f"per_device_train_batch_size is 8 on the command line but train_micro_batch_size_per_gpu is 4 in {path}"
        in message
    )
    assert "fix: set it in one place only: remove --per_device_train_batch_size" in message
    # without DeepSpeed the file is not read
    assert reconcile.reconcile_batch_settings(_args(), set(), {**env, reconcile.DS_ENV: "false"}) == []


def test_fp16_falls_back_to_bf16_only_without_gpu():
    env = {reconcile.MP_ENV: "fp16"}
    assert reconcile.cpu_mixed_precision_fallback(True, env) is None and env[reconcile.MP_ENV] == "fp16"
    assert "bf16" in reconcile.cpu_mixed_precision_fallback(False, env)
    assert env[reconcile.MP_ENV] == "bf16"
    assert reconcile.cpu_mixed_precision_fallback(False, {reconcile.MP_ENV: "no"}) is None


def test_cpu_distributed_defaults_per_strategy():
    launched = {"LOCAL_RANK": "0", "WORLD_SIZE": "2"}
    ddp = dict(launched)
    assert distributed.cpu_distributed_defaults(False, ddp)[0] == {} and ddp["ACCELERATE_USE_CPU"] == "true"
    ds = {**launched, "ACCELERATE_USE_DEEPSPEED": "true"}
    assert distributed.cpu_distributed_defaults(False, ds)[0] == {"ddp_backend": "gloo"}
    assert "ACCELERATE_USE_CPU" not in ds
    fsdp = {**launched, "ACCELERATE_USE_FSDP": "true"}
    assert distributed.cpu_distributed_defaults(False, fsdp)[0] == {"ddp_backend": "gloo"}
    assert distributed.cpu_distributed_defaults(True, dict(launched)) == (
        {},
        [],
    )  # GPUs: accelerate knows best
    assert distributed.cpu_distributed_defaults(False, {}) == ({}, [])  # a plain single process


def test_deepspeed_auto_sizes_fill_only_missing_keys():
    plugin = SimpleNamespace(deepspeed_config={"zero_optimization": {"stage": 3, "reduce_bucket_size": 5}})
    filled = distributed.deepspeed_auto_sizes(SimpleNamespace(deepspeed_plugin=plugin))
    assert filled == ["stage3_prefetch_bucket_size", "stage3_param_persistence_threshold"]
    assert plugin.deepspeed_config["zero_optimization"]["reduce_bucket_size"] == 5
    assert distributed.deepspeed_auto_sizes(SimpleNamespace(deepspeed_plugin=None)) == []


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
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
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
    names = explicit_names(["--config", str(recipe), "--max_grad_norm=0.5"])
    assert {"gradient_accumulation_steps", "learning_rate", "max_grad_norm"} <= names
    with pytest.raises(UserError, match="file not found"):
        explicit_names(["--config", str(tmp_path / "missing.yaml")])
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(UserError, match="must be a mapping"):
        explicit_names(["--config", str(tmp_path / "list.yaml")])


def test_plan_text_shows_the_global_batch_formula():
    info = {
        "distributed_type": "DEEPSPEED",
        "zero_stage": 3,
        "world_size": 4,
        "device": "cuda:0",
        "mixed_precision": "bf16",
    }
    args = SimpleNamespace(
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_length=512,
        learning_rate=2e-5,
        max_steps=100,
        num_train_epochs=3,
        save_strategy="steps",
        save_steps=50,
        save_total_limit=None,
    )
    settings = Settings(None, args, None, batch_plan(args, world_size=4), None)
    text = format_plan(info, settings)
    assert "DEEPSPEED ZeRO-3" in text
    assert "global batch            32 = 4 x 4 x 2" in text
    assert "<= 16384" in text
    assert "checkpoints             every 50 steps and at the end, keep all" in text


def test_the_batch_plan_is_computed_once_from_the_arguments():
    args = SimpleNamespace(
        per_device_train_batch_size=4, gradient_accumulation_steps=2, max_length=512, learning_rate=2e-5
    )
    plan = batch_plan(args, world_size=4)
    assert (plan.global_batch_size, plan.tokens_per_step, plan.num_processes) == (32, 32 * 512, 4)
    assert batch_plan(SimpleNamespace(**{**vars(args), "max_length": None}), 1).tokens_per_step is None


def test_an_unreachable_hub_dataset_is_a_user_error(monkeypatch):
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'org/name' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(
        datasets, "load_dataset", unreachable
    )  # what an offline machine gets, without the wait
    with pytest.raises(
        UserError, match=r"--dataset_name org/name: cannot load it \(ConnectionError: Couldn't reach"
    ):
        data.load_train_dataset("org/name")


# --- precision: one source of truth (the launch), --bf16/--fp16 may only agree -------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--bf16"], {"bf16": True}),
        (["--bf16", "false", "--max_steps", "3"], {"bf16": False}),
        (["--fp16=True"], {"fp16": True}),
        (["--max_steps", "3"], {}),
    ],
)
def test_precision_flags_are_read_as_transformers_reads_them(argv, expected):
    rest, values = reconcile.split_precision_flags(argv)
    assert values == expected
    assert "--bf16" not in rest and "--fp16=True" not in rest
    assert ("--max_steps" in rest) == ("--max_steps" in argv)


def test_the_command_line_overrides_the_recipe_precision():
    _, values = reconcile.split_precision_flags(["--bf16", "false"], recipe={"bf16": True, "fp16": False})
    assert values == {"bf16": False, "fp16": False}


@pytest.mark.parametrize(
    ("user", "launched"), [({"bf16": True}, "bf16"), ({"fp16": False}, "bf16"), ({}, "fp16")]
)
def test_agreeing_precision_flags_are_fine(user, launched):
    reconcile.reconcile_precision(user, launched, config_name="c.yaml")


@pytest.mark.parametrize(
    ("user", "launched", "shown", "launch_fix"),
    [
        ({"bf16": True}, "no", "--bf16", "--mixed_precision bf16"),
        ({"bf16": True}, "fp16", "--bf16", "--mixed_precision bf16"),
        ({"fp16": True}, "bf16", "--fp16", "--mixed_precision fp16"),
        ({"bf16": False}, "bf16", "--bf16 false", "--mixed_precision no"),
    ],
)
def test_a_conflicting_precision_flag_names_both_places_and_the_fix(user, launched, shown, launch_fix):
    with pytest.raises(UserError) as err:
        reconcile.reconcile_precision(user, launched, config_name="z2.yaml")
    message = str(err.value)
    assert f"given {shown} but the launch resolved mixed_precision '{launched}' (z2.yaml" in message
    assert f"fix: drop {shown}" in message and launch_fix in message


@pytest.mark.parametrize(
    ("json_precision", "launched", "expected"),
    [
        (
            {"bf16": {"enabled": True}},
            "no",
            ("bf16", "bf16.enabled"),
        ),  # accelerate leaves 'no'; the JSON decides
        ({"fp16": {"enabled": "true"}}, "no", ("fp16", "fp16.enabled")),
        ({"bf16": {"enabled": False}, "fp16": {"enabled": False}}, "bf16", ("no", "bf16.enabled")),
        ({"bf16": {"enabled": "auto"}}, "bf16", ("bf16", None)),  # "auto": the launch's value fills it
        ({}, "fp16", ("fp16", None)),
    ],
)
def test_a_deepspeed_json_that_pins_the_precision_is_the_launchs_precision(
    tmp_path, json_precision, launched, expected
):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}, **json_precision}))
    env = {reconcile.MP_ENV: launched, reconcile.DS_ENV: "true", reconcile.DS_CONFIG_ENV: str(path)}
    precision, where = reconcile.launch_precision(env)
    assert (precision, where and where.rsplit(": ", 1)[1]) == expected
    assert where is None or where.startswith(str(path))
    # without DeepSpeed, or not started by accelerate, the JSON is not read
    assert reconcile.launch_precision({**env, reconcile.DS_ENV: "false"}) == (launched, None)
    assert reconcile.launch_precision({}) == (None, None)


def test_a_json_that_pins_fp16_is_refused_on_a_cpu_with_the_fix(tmp_path, monkeypatch):
    from disttune.train.settings import _parse_with_launch_precision

    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"fp16": {"enabled": True}, "zero_optimization": {"stage": 2}}))
    for name, value in (
        (reconcile.MP_ENV, "no"),
        (reconcile.DS_ENV, "true"),
        (reconcile.DS_CONFIG_ENV, str(path)),
    ):
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError) as err:
        _parse_with_launch_precision(["--output_dir", str(tmp_path / "out")], {}, {}, cuda=False)
    assert f"{path}: fp16.enabled is true, and no GPU is visible" in str(err.value)
    assert "fix: on this machine set bf16.enabled to true and fp16.enabled to false" in str(err.value)


def test_a_flag_against_a_json_pinned_precision_names_the_json_key():
    with pytest.raises(UserError) as err:
        reconcile.reconcile_precision({"bf16": False}, "bf16", pinned_at="ds.json: bf16.enabled")
    message = str(err.value)
    assert (
        "given --bf16 false but the launch resolved mixed_precision 'bf16' (ds.json: bf16.enabled)" in message
    )
    assert "fix: drop --bf16 false" in message and "set bf16.enabled there" in message


def test_without_accelerate_launch_the_flags_are_not_checked():
    reconcile.reconcile_precision({"bf16": True}, None)


def test_precision_is_set_from_the_launch():
    args = SimpleNamespace(bf16=False, fp16=True)
    reconcile.apply_precision(args, "bf16")
    assert (args.bf16, args.fp16) == (True, False)
    reconcile.apply_precision(args, "no")
    assert (args.bf16, args.fp16) == (False, False)


def test_the_plan_says_whether_and_how_often_the_run_checkpoints():
    args = SimpleNamespace(save_strategy="no", save_steps=500, save_total_limit=None)
    assert describe_checkpointing(args) == "off (--save_steps N turns them on)"
    args = SimpleNamespace(save_strategy="steps", save_steps=4, save_total_limit=2)
    assert describe_checkpointing(args) == "every 4 steps and at the end, keep the last 2"


def test_save_steps_alone_turns_step_checkpoints_on(tmp_path, monkeypatch):
    from disttune.train.settings import resolve

    monkeypatch.chdir(tmp_path)
    args = resolve(["--output_dir", str(tmp_path / "a"), "--save_steps", "4"]).training_args
    assert str(getattr(args.save_strategy, "value", args.save_strategy)) == "steps" and args.save_steps == 4
    args = resolve(
        ["--output_dir", str(tmp_path / "b"), "--save_steps", "4", "--save_strategy", "no"]
    ).training_args
    assert str(getattr(args.save_strategy, "value", args.save_strategy)) == "no"
    args = resolve(["--output_dir", str(tmp_path / "c")]).training_args
    assert str(getattr(args.save_strategy, "value", args.save_strategy)) == "no"


def test_a_missing_model_folder_is_named_as_such(tmp_path):
    from types import SimpleNamespace

    from disttune.train.build import load_model_and_tokenizer

    args = SimpleNamespace(
        model_name_or_path=str(tmp_path / "Qwen2.5-7B"),
        model_revision=None,
        dtype=None,
        attn_implementation=None,
    )
    with pytest.raises(UserError, match=r"Qwen2.5-7B: no such folder") as err:
        load_model_and_tokenizer(args)
    assert "fix: give the folder" in str(err.value)


def test_the_cuda_allocator_gets_expandable_segments_unless_the_user_configured_it():
    from disttune.train.distributed import default_allocator

    environ = {}
    assert "disttune's default" in default_allocator(environ)
    assert environ == {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        environ = {name: "max_split_size_mb:128"}
        assert default_allocator(environ) == f"{name}=max_split_size_mb:128 (yours)"
        assert environ == {name: "max_split_size_mb:128"}
