"""What a DeepSpeed JSON's optimizer and scheduler blocks replace of the training script's arguments: a
warning naming it without the script's arguments; with them (`-- ARGS`), an error for each conflict."""

from __future__ import annotations

import json

from disttune.config import check_config
from disttune.config.check import check_files
from disttune.train.args import compared_flags

OPTIMIZER = {
    "type": "AdamW",
    "params": {"lr": "auto", "weight_decay": "auto", "betas": "auto", "eps": "auto"},
}
SCHEDULER = {"type": "WarmupDecayLR", "params": {"warmup_num_steps": "auto", "total_num_steps": "auto"}}
BASE = {"zero_optimization": {"stage": 2}}


def run(tmp_path, data: dict, args=None):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(data))
    return check_config(path, script_args=compared_flags(args) if args else None)


def at(findings, key):
    return [(f.severity, f.message) for f in findings if f.key == key]


def test_without_script_arguments_each_block_warns_naming_what_it_replaces(tmp_path):
    found = run(tmp_path, {**BASE, "optimizer": OPTIMIZER, "scheduler": SCHEDULER})
    assert [(f.severity, f.key) for f in found] == [("warning", "optimizer"), ("warning", "scheduler")]
    assert "replaces the script's --optim (DeepSpeed builds AdamW)" in found[0].message
    assert "replaces the script's --lr_scheduler_type (DeepSpeed builds WarmupDecayLR)" in found[1].message
    assert run(tmp_path, BASE) == []  # no block, nothing replaced


def test_explicit_values_name_the_flags_they_must_equal(tmp_path):
    optimizer = {"type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9, 0.95], "weight_decay": "auto"}}
    scheduler = {"type": "WarmupLR", "params": {"warmup_max_lr": 1e-4, "warmup_num_steps": 100}}
    found = run(tmp_path, {**BASE, "optimizer": optimizer, "scheduler": scheduler})
    ((severity, message),) = at(found, "optimizer")
    assert (
        severity == "warning"
        and "lr 0.0001, betas [0.9, 0.95] must equal --learning_rate, --adam_beta1 / --adam_beta2" in message
    )
    ((severity, message),) = at(found, "scheduler")
    assert "warmup_max_lr 0.0001, warmup_num_steps 100 must equal --learning_rate, --warmup_steps" in message


def test_an_optimizer_block_without_lr_leaves_learning_rate_unused(tmp_path):
    data = {**BASE, "optimizer": {"type": "AdamW", "params": {"weight_decay": "auto"}}}
    ((severity, message),) = at(run(tmp_path, data), "optimizer")
    assert severity == "warning" and "--learning_rate is not used either" in message
    f = [f for f in run(tmp_path, data, ["--learning_rate", "2e-5"]) if f.key == "optimizer.params.lr"]
    assert [x.severity for x in f] == ["error"] and '"lr": "auto"' in f[0].fix


def test_with_script_arguments_a_conflict_is_an_error(tmp_path):
    optimizer = {"type": "AdamW", "params": {"lr": 1e-4, "weight_decay": 0.01}}
    scheduler = {"type": "WarmupLR", "params": {"warmup_max_lr": 1e-4, "warmup_num_steps": 100}}
    data = {**BASE, "optimizer": optimizer, "scheduler": scheduler}
    args = [
        "--learning_rate",
        "2e-5",
        "--weight_decay",
        "0.01",
        "--warmup_steps",
        "50",
        "--lr_scheduler_type",
        "cosine",
    ]
    found = run(tmp_path, data, args)
    errors = {f.key: f for f in found if f.severity == "error"}
    assert set(errors) == {
        "optimizer.params.lr",
        "scheduler.params.warmup_max_lr",
        "scheduler.params.warmup_num_steps",
        "scheduler",
    }
    assert "--learning_rate 2e-5" in errors["optimizer.params.lr"].message
    assert "mismatch TrainingArguments" in errors["optimizer.params.lr"].message
    assert (
        "--lr_scheduler_type cosine" in errors["scheduler"].message
        and "does not use" in errors["scheduler"].message
    )
    # the same values given on the command line: no conflict, and nothing left to warn about for the optimizer
    args = ["--learning_rate", "1e-4", "--weight_decay", "0.01", "--warmup_steps", "100"]
    found = run(tmp_path, data, args)
    assert [f for f in found if f.severity == "error"] == []


def test_optim_flag_is_not_used_with_an_optimizer_block(tmp_path):
    found = run(tmp_path, {**BASE, "optimizer": OPTIMIZER}, ["--optim", "adamw_torch_fused"])
    ((severity, message),) = at(found, "optimizer")
    assert severity == "error" and "--optim adamw_torch_fused" in message


def test_total_num_steps_is_compared_with_max_steps(tmp_path):
    scheduler = {"type": "WarmupDecayLR", "params": {"warmup_num_steps": "auto", "total_num_steps": 1000}}
    data = {**BASE, "scheduler": scheduler}
    assert (
        at(run(tmp_path, data, ["--max_steps", "500"]), "scheduler.params.total_num_steps")[0][0] == "error"
    )
    assert at(run(tmp_path, data, ["--max_steps", "1000"]), "scheduler.params.total_num_steps") == []
    ((severity, message),) = at(run(tmp_path, data), "scheduler")
    assert "total_num_steps 1000 must equal the run's number of optimizer steps (--max_steps)" in message


def test_the_json_an_accelerate_config_points_to_is_compared_too(tmp_path):
    (tmp_path / "ds.json").write_text(json.dumps({**BASE, "scheduler": SCHEDULER}))
    (tmp_path / "acc.yaml").write_text(
        "distributed_type: DEEPSPEED\nnum_processes: 2\ndeepspeed_config:\n  deepspeed_config_file: ds.json\n"
    )
    report = check_files(
        [tmp_path / "acc.yaml"], script_args=compared_flags(["--lr_scheduler_type", "linear"]), cwd=tmp_path
    )
    assert [(f.severity, f.key) for f in report.findings] == [("error", "scheduler")]
