"""`config new` internals: every strategy on 1 and 2 machines passes check; GPU detection; Slurm script."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from disttune.config import check_config
from disttune.config.new import (
    STRATEGIES,
    Gpu,
    NewConfig,
    detect_gpus,
    launch_commands,
    pick_mixed_precision,
    render_sbatch,
    render_yaml,
    validate,
    write_new,
)
from disttune.errors import UserError


@pytest.mark.parametrize("machines", [1, 2])
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("precision", ["bf16", "no"])
def test_every_strategy_passes_check(tmp_path, strategy, machines, precision):
    cfg = NewConfig(
        strategy,
        8 * machines,
        machines,
        machines - 1,
        "10.0.0.1" if machines > 1 else None,
        mixed_precision=precision,
    )
    path = write_new(cfg, tmp_path / "c.yaml")[0]
    assert check_config(path) == []
    data = yaml.safe_load(path.read_text())
    assert data["num_processes"] == 8 * machines and data["mixed_precision"] == precision


def test_slurm_yaml_without_ip_is_one_node_and_passes_check(tmp_path):
    cfg = NewConfig("zero3", 16, 2)
    yaml_path, sbatch = write_new(cfg, tmp_path / "z.yaml", slurm=True)
    assert check_config(yaml_path) == []
    text = sbatch.read_text()
    for needle in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        "srun",
        "--num_machines $SLURM_NNODES",
        "--num_processes 16",
        "--machine_rank $SLURM_NODEID",
        "$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1)",
        "--main_process_port 29500",
        "07_distributed_training.py",
    ):
        assert needle in text
    assert [line for line in render_sbatch(cfg, "z.yaml").splitlines() if line.startswith("srun")] != []


def test_launch_command_per_machine():
    cmds = launch_commands(NewConfig("ddp", 16, 2, 0, "10.0.0.1", 29501), "c.yaml")
    assert len(cmds) == 2 and "--machine_rank 1" in cmds[1] and "--main_process_ip 10.0.0.1" in cmds[0]
    assert "--main_process_port 29501" in cmds[0]


@pytest.mark.parametrize(
    ("cfg", "words"),
    [
        (NewConfig("ddp", 8, 2, 2, "10.0.0.1"), "--machine_rank must be in 0..1"),
        (NewConfig("ddp", 8, 2, 0), "--main_process_ip"),
        (NewConfig("ddp", 7, 2, 0, "10.0.0.1"), "multiple of"),
        (NewConfig("ddp", 8, 1, 0, None, 0), "1-65535"),
    ],
)
def test_refusals(cfg, words):
    with pytest.raises(UserError, match=words):
        validate(cfg)


def test_refuses_to_overwrite_and_missing_folder(tmp_path):
    cfg = NewConfig("ddp", 2)
    write_new(cfg, tmp_path / "c.yaml")
    with pytest.raises(UserError, match="already exists"):
        write_new(cfg, tmp_path / "c.yaml")
    write_new(cfg, tmp_path / "c.yaml", force=True)
    with pytest.raises(UserError, match="does not exist"):
        write_new(cfg, tmp_path / "nope" / "c.yaml")


def fake_smi(stdout, rc=0):
    def runner(cmd, **kwargs):
        assert cmd[0] == "nvidia-smi"
        return subprocess.CompletedProcess(cmd, rc, stdout, "")

    return runner


def test_detect_gpus_parses_nvidia_smi():
    gpus = detect_gpus(fake_smi("NVIDIA H100 80GB HBM3, 9.0\nTesla V100-SXM2-16GB, 7.0\n"))
    assert gpus == [Gpu("NVIDIA H100 80GB HBM3", 9.0), Gpu("Tesla V100-SXM2-16GB", 7.0)]
    assert detect_gpus(fake_smi("", rc=9)) is None


def test_auto_precision():
    assert pick_mixed_precision("auto", [Gpu("A100", 8.0)])[0] == "bf16"
    value, note = pick_mixed_precision("auto", [Gpu("A100", 8.0), Gpu("T4", 7.5)])
    assert value == "fp16" and "T4" in note
    value, note = pick_mixed_precision("auto", None)
    assert value == "bf16" and "no NVIDIA GPU is visible" in note
    assert pick_mixed_precision("fp16", None) == ("fp16", None)


def test_yaml_quotes_no():
    assert "mixed_precision: 'no'" in render_yaml(NewConfig("ddp", 2, mixed_precision="no"))
