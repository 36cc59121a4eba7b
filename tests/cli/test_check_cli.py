"""`disttune check` in process: exit codes 0/1/2, text and JSON output, script arguments after `--`."""

from __future__ import annotations

import json
import time

import pytest

from disttune.cli import main
from disttune.config import shipped_config_names, shipped_config_path

ZERO2 = "distributed_type: DEEPSPEED\nnum_processes: 4\nmixed_precision: bf16\ndeepspeed_config:\n  zero_stage: 2\n"


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_all_shipped_configs_pass_quickly(capsys):
    start = time.perf_counter()
    code = main(["check", "--strict", *(str(shipped_config_path(n)) for n in shipped_config_names())])
    assert code == 0 and time.perf_counter() - start < 1.0
    assert f"0 errors, 0 warnings in {len(shipped_config_names())} files" in capsys.readouterr().out


def test_error_block_format_and_exit_1(tmp_path, capsys):
    path = write(tmp_path, ZERO2.replace("zero_stage: 2", "zero_stage: 5"))
    assert main(["check", path]) == 1
    out = capsys.readouterr().out
    assert f"ERROR {path}:deepspeed_config.zero_stage: " in out and "(value: 5)" in out
    assert "\n  fix: use one of: 0, 1, 2, 3" in out and "1 error, 0 warnings in 1 file" in out


def test_warnings_exit_0_unless_strict(tmp_path, capsys):
    path = write(
        tmp_path, "distributed_type: MULTI_GPU\nnum_processes: 16\nnum_machines: 2\nmachine_rank: 0\n"
    )
    assert main(["check", path]) == 0
    assert "WARNING" in capsys.readouterr().out
    assert main(["check", path, "--strict"]) == 1


def test_json_output(tmp_path, capsys):
    good, bad = write(tmp_path, ZERO2, "good.yaml"), write(tmp_path, ZERO2 + "colour: red\n", "bad.yaml")
    assert main(["check", "--json", good, bad]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["files"] == [good, bad] and data["errors"] == 1 and data["warnings"] == 0
    assert data["findings"][0]["key"] == "colour" and set(data["findings"][0]) == {
        "severity",
        "file",
        "key",
        "value",
        "message",
        "fix",
    }


def test_script_args_after_double_dash(tmp_path, capsys):
    path = write(tmp_path, ZERO2 + "  gradient_accumulation_steps: 1\n")
    assert main(["check", path, "--", "--gradient_accumulation_steps", "4"]) == 1
    assert "mismatch TrainingArguments" in capsys.readouterr().out
    assert main(["check", path, "--", "--gradient_accumulation_steps", "1", "--bf16"]) == 0


def test_num_processes_option_feeds_the_batch_check(tmp_path, capsys):
    ds = write(
        tmp_path,
        json.dumps(
            {
                "train_batch_size": 32,
                "train_micro_batch_size_per_gpu": 4,
                "gradient_accumulation_steps": 1,
                "zero_optimization": {"stage": 2},
            }
        ),
        "ds.json",
    )
    assert main(["check", ds, "--num_processes", "8"]) == 0
    assert main(["check", "--num_processes=4", ds]) == 1


def test_misuse_exits_2(tmp_path, capsys):
    assert main(["check"]) == 2
    assert main(["check", write(tmp_path, ZERO2), "--bogus"]) == 2
    assert main(["check", write(tmp_path, ZERO2), "--num_processes", "x"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "script arguments go after `--`" in err


def test_unreadable_file_is_reported_with_the_others(tmp_path, capsys):
    bad = write(tmp_path, "a: [1,\n", "bad.yaml")
    assert main(["check", bad, write(tmp_path, ZERO2)]) == 1
    out = capsys.readouterr().out
    assert "not valid YAML" in out and "in 2 files" in out


DS_JSON = '{"zero_optimization": {"stage": 2}, "bf16": {"enabled": true}, '


@pytest.mark.parametrize(
    ("name", "text", "key"),
    [
        (
            "ga0.yaml",
            ZERO2 + "  gradient_accumulation_steps: 0\n",
            "deepspeed_config.gradient_accumulation_steps",
        ),
        ("np0.yaml", ZERO2.replace("num_processes: 4", "num_processes: 0"), "num_processes"),
        ("clip.yaml", ZERO2 + "  gradient_clipping: -1.0\n", "deepspeed_config.gradient_clipping"),
        ("ga0.json", DS_JSON + '"gradient_accumulation_steps": 0}', "gradient_accumulation_steps"),
        ("clip.json", DS_JSON + '"gradient_clipping": -1}', "gradient_clipping"),
        ("no8.yaml", "distributed_type: 'NO'\nnum_processes: 8\n", "num_processes"),
        ("no8_unquoted.yaml", "distributed_type: NO\nnum_processes: 8\n", "num_processes"),
        ("both.yaml", ZERO2 + "fsdp_config:\n  fsdp_version: 2\n", "fsdp_config"),
        (
            "renamed.yaml",
            "distributed_type: FSDP\nnum_processes: 2\nfsdp_config:\n  fsdp_backward_prefetch_policy: BACKWARD_PRE\n",
            "fsdp_config.fsdp_backward_prefetch_policy",
        ),
        (
            "dynamo.yaml",
            "distributed_type: MULTI_GPU\nnum_processes: 2\ndynamo_config:\n  dynamo_backend: INDUCTR\n",
            "dynamo_config.dynamo_backend",
        ),
        (
            "bucket.json",
            '{"zero_optimization": {"stage": 2, "reduce_bucket_size": 0}}',
            "zero_optimization.reduce_bucket_size",
        ),
        (
            "ratio.json",
            '{"zero_optimization": {"stage": 3, "offload_optimizer": {"ratio": 1.5}}}',
            "zero_optimization.offload_optimizer.ratio",
        ),
        ("amp.json", '{"zero_optimization": {"stage": 2}, "amp": {"enabled": true}}', "amp"),
        ("nullnp.yaml", "distributed_type: MULTI_GPU\nnum_processes: null\n", "num_processes"),
    ],
)
def test_each_broken_class_exits_1_naming_the_key(tmp_path, capsys, name, text, key):
    path = write(tmp_path, text, name)
    assert main(["check", path]) == 1
    out = capsys.readouterr().out
    assert f"ERROR {path}:{key}: " in out


def test_precision_conflict_with_the_script_is_reported_without_starting_anything(tmp_path, capsys):
    path = write(tmp_path, ZERO2.replace("bf16", "fp16"))
    assert main(["check", path, "--", "--bf16"]) == 1
    out = capsys.readouterr().out
    assert f"ERROR {path}:mixed_precision: " in out and "--bf16" in out
    assert (
        "fix: drop --bf16 (the script takes the precision from the config), or set mixed_precision: bf16"
        in out
    )
    assert main(["check", path, "--", "--fp16", "true"]) == 0


def test_unquoted_no_is_clean_and_slurm_multinode_only_warns(tmp_path, capsys):
    assert main(["check", write(tmp_path, "distributed_type: NO\nmixed_precision: 'no'\n", "no.yaml")]) == 0
    slurm = write(
        tmp_path,
        ZERO2.replace("num_processes: 4", "num_processes: 16\nnum_machines: 2")
        + "  deepspeed_multinode_launcher: standard\n",
        "slurm.yaml",
    )
    assert main(["check", slurm]) == 0
    out = capsys.readouterr().out
    assert "--main_process_ip" in out and "--machine_rank" in out and "0 errors, 2 warnings" in out


def test_a_deepspeed_scheduler_block_against_the_scripts_arguments(tmp_path, capsys):
    ds = write(
        tmp_path,
        json.dumps({"zero_optimization": {"stage": 2}, "scheduler": {"type": "WarmupLR", "params": {}}}),
        "ds.json",
    )
    assert main(["check", ds]) == 0  # without the script's arguments: a warning naming what is replaced
    out = capsys.readouterr().out
    assert f"WARNING {ds}:scheduler: " in out and "--lr_scheduler_type" in out
    assert main(["check", ds, "--", "--lr_scheduler_type", "cosine"]) == 1  # with them: the conflict
    assert f"ERROR {ds}:scheduler: the script is given --lr_scheduler_type cosine" in capsys.readouterr().out
