"""Training-script arguments after `--` against the config's gradient accumulation, clipping, precision."""

from __future__ import annotations

import json

import pytest

from disttune.config import check_config
from disttune.config.script_args import parse_script_args

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
        (["--bf16"], {"mixed_precision": "bf16"}),
        (["--fp16", "--lr", "1e-4"], {"mixed_precision": "fp16"}),
        (["--bf16", "false", "--fp16", "true"], {"mixed_precision": "fp16"}),
        (["--bf16=False"], {}),
        (["--mixed_precision", "FP16"], {"mixed_precision": "fp16"}),
        (["--per_device_train_batch_size", "8"], {"per_device_train_batch_size": 8}),
        (["--gradient_accumulation_steps"], {}),
        (["train.py", "--gradient_accumulation_steps", "x"], {}),
    ],
)
def test_parse(argv, expected):
    parsed = parse_script_args(argv)
    got = {k: getattr(parsed, k) for k in ("gradient_accumulation_steps", "max_grad_norm", "mixed_precision",
                                          "per_device_train_batch_size") if getattr(parsed, k) is not None}  # fmt: skip
    assert got == expected


def run(tmp_path, text, argv, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return check_config(path, script_args=argv)


def test_matching_or_absent_values_are_fine(tmp_path):
    assert run(tmp_path, ZERO2, []) == []
    assert run(tmp_path, ZERO2, ["--gradient_accumulation_steps", "1", "--max_grad_norm", "1", "--bf16"]) == []


def test_deepspeed_mismatches_are_errors_naming_both_places(tmp_path):
    found = run(tmp_path, ZERO2, ["--gradient_accumulation_steps=4", "--max_grad_norm", "0.3", "--fp16"])
    by_key = {f.key: f for f in found}
    assert set(by_key) == {"deepspeed_config.gradient_accumulation_steps", "deepspeed_config.gradient_clipping",
                           "mixed_precision"}  # fmt: skip
    ga = by_key["deepspeed_config.gradient_accumulation_steps"]
    assert ga.severity == "error" and "--gradient_accumulation_steps=4" in ga.message
    assert "mismatch TrainingArguments" in ga.message and "drop --gradient_accumulation_steps=4" in ga.fix
    assert "--fp16" in by_key["mixed_precision"].message


def test_non_deepspeed_precision_mismatch_is_a_warning(tmp_path):
    text = "distributed_type: MULTI_GPU\nnum_processes: 2\nmixed_precision: bf16\n"
    f = run(tmp_path, text, ["--fp16"])[0]
    assert f.severity == "warning" and "script's value wins" in f.message


def test_json_values_are_compared(tmp_path):
    data = {"gradient_accumulation_steps": 2, "gradient_clipping": "auto", "train_micro_batch_size_per_gpu": 4,
            "bf16": {"enabled": True}, "zero_optimization": {"stage": 2}}  # fmt: skip
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(data))
    found = check_config(path, script_args=["--gradient_accumulation_steps", "8", "--max_grad_norm", "0.3",
                                            "--per_device_train_batch_size", "2", "--fp16"])  # fmt: skip
    assert {f.key for f in found} == {"gradient_accumulation_steps", "train_micro_batch_size_per_gpu", "bf16.enabled"}
    assert all(f.severity == "error" for f in found)
