"""Training-script arguments after `--` against the config's gradient accumulation, clipping, precision."""

from __future__ import annotations

import json

import pytest

from disttune.config import check_config
from disttune.train.args import compared_flags

ZERO2 = """distributed_type: DEEPSPEED
num_processes: 4
mixed_precision: bf16
deepspeed_config:
  zero_stage: 2
  gradient_accumulation_steps: 1
  gradient_clipping: 1.0
"""


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--gradient_accumulation_steps", "4"], {"gradient_accumulation_steps": 4}),
        (["--gradient_accumulation_steps=4"], {"gradient_accumulation_steps": 4}),
        (["--gradient-accumulation-steps", "4"], {"gradient_accumulation_steps": 4}),
        (["--max_grad_norm", "0.5", "--output_dir", "x"], {"max_grad_norm": 0.5}),
        (["--max_grad_norm", "-1"], {"max_grad_norm": -1.0}),
        (["--bf16"], {"bf16": True}),
        (["--fp16", "--my_flag", "1e-4"], {"fp16": True}),  # another script's flag is left alone
        (["--bf16", "false", "--fp16", "true"], {"bf16": False, "fp16": True}),
        (["--bf16=False"], {"bf16": False}),
        (["--bf16=True"], {"bf16": True}),
        (["--per_device_train_batch_size", "8"], {"per_device_train_batch_size": 8}),
        (["--gradient_accumulation_steps"], {}),
        (["train.py", "--gradient_accumulation_steps", "x"], {}),
        (
            ["--learning_rate", "0.1", "--config", "missing.yaml"],
            {},
        ),  # refused by the script: nothing compared
    ],
)
def test_parse(argv, expected):
    parsed = compared_flags(argv)
    names = ("gradient_accumulation_steps", "max_grad_norm", "bf16", "fp16", "per_device_train_batch_size")
    assert {k: getattr(parsed, k) for k in names if getattr(parsed, k) is not None} == expected


def test_flags_are_shown_as_written():
    raw = compared_flags(["--bf16", "false", "--gradient-accumulation-steps=4", "--fp16"]).raw
    assert raw == {
        "bf16": "--bf16 false",
        "gradient_accumulation_steps": "--gradient-accumulation-steps=4",
        "fp16": "--fp16",
    }


def run(tmp_path, text, argv, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return check_config(path, script_args=compared_flags(argv) if argv else None)


def test_matching_or_absent_values_are_fine(tmp_path):
    assert run(tmp_path, ZERO2, []) == []
    assert (
        run(tmp_path, ZERO2, ["--gradient_accumulation_steps", "1", "--max_grad_norm", "1", "--bf16"]) == []
    )


def test_deepspeed_mismatches_are_errors_naming_both_places(tmp_path):
    found = run(tmp_path, ZERO2, ["--gradient_accumulation_steps=4", "--max_grad_norm", "0.3", "--fp16"])
    by_key = {f.key: f for f in found}
    assert set(by_key) == {
        "deepspeed_config.gradient_accumulation_steps",
        "deepspeed_config.gradient_clipping",
        "mixed_precision",
    }
    ga = by_key["deepspeed_config.gradient_accumulation_steps"]
    assert ga.severity == "error" and "--gradient_accumulation_steps=4" in ga.message
    assert "mismatch TrainingArguments" in ga.message and "drop --gradient_accumulation_steps=4" in ga.fix
    assert "--fp16" in by_key["mixed_precision"].message and by_key["mixed_precision"].severity == "error"


DDP_BF16 = "distributed_type: MULTI_GPU\nnum_processes: 2\nmixed_precision: bf16\n"


@pytest.mark.parametrize(
    ("config", "argv", "flag", "wanted"),
    [
        (DDP_BF16, ["--fp16"], "--fp16", "fp16"),
        (DDP_BF16, ["--bf16", "false"], "--bf16 false", "no"),
        (DDP_BF16.replace("bf16", "fp16"), ["--bf16"], "--bf16", "bf16"),
        (DDP_BF16.replace("bf16", "'no'"), ["--bf16=True"], "--bf16=True", "bf16"),
        (ZERO2.replace("bf16", "fp16"), ["--bf16"], "--bf16", "bf16"),
    ],
)
def test_precision_flag_that_disagrees_with_the_config_is_an_error(tmp_path, config, argv, flag, wanted):
    found = run(tmp_path, config, argv)
    assert [(f.severity, f.key) for f in found] == [("error", "mixed_precision")]
    assert flag in found[0].message and "mixed_precision" in found[0].message
    assert found[0].fix == (
        f"drop {flag} (the script takes the precision from the config), "
        f"or set mixed_precision: {wanted} in the config"
    )


@pytest.mark.parametrize(
    "argv",
    [["--bf16"], ["--bf16", "true"], ["--bf16=True"], ["--fp16", "false"], ["--fp16=False", "--bf16"], []],
)
def test_precision_flag_that_agrees_is_fine(tmp_path, argv):
    assert run(tmp_path, DDP_BF16, argv) == []


def test_unset_precision_is_not_compared(tmp_path):
    # accelerate's own --mixed_precision on the launch line may set it: nothing to compare with
    assert run(tmp_path, "distributed_type: MULTI_GPU\nnum_processes: 2\n", ["--bf16"]) == []


def test_precision_is_compared_with_the_referenced_json_too(tmp_path):
    (tmp_path / "ds.json").write_text(
        json.dumps({"bf16": {"enabled": True}, "zero_optimization": {"stage": 2}})
    )
    text = f"distributed_type: DEEPSPEED\nnum_processes: 2\ndeepspeed_config:\n  deepspeed_config_file: {tmp_path / 'ds.json'}\n"
    found = run(tmp_path, text, ["--fp16"])
    assert [(f.severity, f.file, f.key) for f in found] == [
        ("error", str(tmp_path / "ds.json"), "bf16.enabled")
    ]
    assert "--fp16" in found[0].message and "drop --fp16" in found[0].fix
    (tmp_path / "ds.json").write_text(
        json.dumps({"bf16": {"enabled": "auto"}, "zero_optimization": {"stage": 2}})
    )
    assert run(tmp_path, text, ["--fp16"]) == []  # "auto": nothing pinned


def test_json_values_are_compared(tmp_path):
    data = {
        "gradient_accumulation_steps": 2,
        "gradient_clipping": "auto",
        "train_micro_batch_size_per_gpu": 4,
        "bf16": {"enabled": True},
        "zero_optimization": {"stage": 2},
    }
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(data))
    found = check_config(
        path,
        script_args=compared_flags(
            [
                "--gradient_accumulation_steps",
                "8",
                "--max_grad_norm",
                "0.3",
                "--per_device_train_batch_size",
                "2",
                "--fp16",
            ]
        ),
    )
    assert {f.key for f in found} == {
        "gradient_accumulation_steps",
        "train_micro_batch_size_per_gpu",
        "bf16.enabled",
    }
    assert all(f.severity == "error" for f in found)


def test_the_script_parser_reads_recipes_and_refuses_what_the_script_refuses(tmp_path):
    """One parser (train.args): a --config recipe's values count as given; an argument list the training
    script would refuse is a finding, with the script's own words."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("gradient_accumulation_steps: 4\nbf16: true\n")
    parsed = compared_flags(["--config", str(recipe)])
    assert (parsed.gradient_accumulation_steps, parsed.bf16) == (4, True)
    assert (
        parsed.raw["gradient_accumulation_steps"] == "gradient_accumulation_steps: 4 in the --config recipe"
    )
    found = run(tmp_path, ZERO2, ["--config", str(recipe)])
    assert {f.key for f in found} == {"deepspeed_config.gradient_accumulation_steps"}
    bad = run(tmp_path, ZERO2, ["--lr", "1e-4"])  # an abbreviation the script's parser finds ambiguous
    assert [(f.file, f.severity) for f in bad] == [("-- SCRIPT ARGS", "warning")]
    assert "would refuse these arguments" in bad[0].message and "ambiguous option: --lr" in bad[0].message
