"""`disttune config new|list|path` in process."""

from __future__ import annotations

import pytest

from disttune.cli import main
from disttune.config import check_config
from disttune.strategies import SHIPPED


@pytest.mark.parametrize("strategy", [s.name for s in SHIPPED])  # names pinned in test_strategies_table.py
def test_new_writes_a_config_that_passes_check(tmp_path, capsys, strategy):
    out = tmp_path / f"{strategy}.yaml"
    assert main(["config", "new", "--strategy", strategy, "--num_processes", "4", "--output", str(out)]) == 0
    assert check_config(out) == []
    assert f"accelerate launch --config_file {out} 07_distributed_training.py" in capsys.readouterr().out


def test_new_two_machines_prints_one_command_per_machine(tmp_path, capsys):
    out = tmp_path / "c.yaml"
    argv = [
        "config",
        "new",
        "--strategy",
        "zero3",
        "--num_processes",
        "16",
        "--num_machines",
        "2",
        "--main_process_ip",
        "10.1.2.3",
        "--main_process_port",
        "29600",
        "--mixed_precision",
        "fp16",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "--machine_rank 0" in text and "--machine_rank 1" in text and "--main_process_port 29600" in text
    assert check_config(out) == []


def test_new_slurm_writes_sbatch(tmp_path, capsys):
    out = tmp_path / "c.yaml"
    argv = [
        "config",
        "new",
        "--strategy",
        "fsdp2",
        "--num_processes",
        "16",
        "--num_machines",
        "2",
        "--slurm",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    assert (tmp_path / "c.sbatch").is_file() and "sbatch" in capsys.readouterr().out


def test_new_without_output_prints_yaml(capsys):
    assert (
        main(["config", "new", "--strategy", "ddp", "--num_processes", "2", "--mixed_precision", "no"]) == 0
    )
    assert "mixed_precision: 'no'" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (
            ["--num_machines", "2", "--machine_rank", "2", "--main_process_ip", "10.0.0.1"],
            "--machine_rank must be in 0..1",
        ),
        (["--num_machines", "2"], "--main_process_ip"),
        (["--slurm"], "--output"),
    ],
)
def test_new_refusals_exit_1(tmp_path, capsys, extra, words):
    assert main(["config", "new", "--strategy", "ddp", "--num_processes", "8", *extra]) == 1
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_new_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "c.yaml"
    out.write_text("keep me\n")
    assert main(["config", "new", "--strategy", "ddp", "--num_processes", "2", "-o", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err and out.read_text() == "keep me\n"
    assert (
        main(["config", "new", "--strategy", "ddp", "--num_processes", "2", "-o", str(out), "--force"]) == 0
    )


def test_new_misuse_exits_2():
    assert main(["config", "new", "--strategy", "zero4", "--num_processes", "2"]) == 2
    assert main(["config"]) == 2


def test_list_and_path(capsys):
    assert main(["config", "list"]) == 0
    assert "deepspeed_zero3" in capsys.readouterr().out
    assert main(["config", "path", "fsdp2.yaml"]) == 0
    assert capsys.readouterr().out.strip().endswith("fsdp2.yaml")
    assert main(["config", "path", "nope"]) == 1
    assert "Shipped configs" in capsys.readouterr().err


def test_num_processes_defaults_to_local_gpus(tmp_path, capsys, monkeypatch):
    import disttune.config.new as new

    monkeypatch.setattr(new, "detect_gpus", lambda: None)
    assert main(["config", "new", "--strategy", "ddp"]) == 1
    assert "--num_processes is required" in capsys.readouterr().err
    monkeypatch.setattr(new, "detect_gpus", lambda: [new.Gpu("T4", 7.5)] * 2)
    out = tmp_path / "c.yaml"
    argv = [
        "config",
        "new",
        "--strategy",
        "ddp",
        "--num_machines",
        "2",
        "--main_process_ip",
        "10.0.0.1",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    text = out.read_text()
    assert "num_processes: 4 " in text and "mixed_precision: fp16" in text
