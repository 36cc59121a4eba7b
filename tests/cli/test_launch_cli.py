"""`disttune launch`: the pure command builder, the CLI in process, and one real `accelerate launch`."""

from __future__ import annotations

import json
import sys

import pytest

from disttune.bench import free_port  # the project's one free-port helper
from disttune.cli import main
from disttune.errors import UserError
from disttune.launch import DEBUG_ENV, build_launch_command, script_timeout, shell_line

LAUNCHER = [sys.executable, "-m", "accelerate.commands.launch"]


def write_config(tmp_path, **extra) -> str:
    # MULTI_GPU on a machine without GPUs runs N CPU processes over gloo (accelerate's multi_gpu_launcher);
    # MULTI_CPU would start only one process unless mpirun is used.
    cfg = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "MULTI_GPU",
        "num_processes": 2,
        "num_machines": 1,
        "machine_rank": 0,
        "gpu_ids": "all",
        "mixed_precision": "no",
        "rdzv_backend": "static",
        "same_network": True,
        "main_training_function": "main",
        "use_cpu": False,
        "main_process_ip": "127.0.0.1",
        "main_process_port": free_port(),
        **extra,
    }
    path = tmp_path / "launch.yaml"
    path.write_text(json.dumps(cfg))
    return str(path)


@pytest.fixture
def script(tmp_path) -> str:
    path = tmp_path / "show_world.py"
    path.write_text(
        "import os\nimport sys\nprint('WORLD_SIZE', os.environ.get('WORLD_SIZE'), sys.argv[1:])\n"
    )
    return str(path)


# --- the pure builder -------------------------------------------------------------------------------


def test_build_plain_command():
    argv, env = build_launch_command("c.yaml", "train.py", ["--lr", "1e-4"], ["--num_processes", "4"])
    assert argv == [*LAUNCHER, "--config_file", "c.yaml", "--num_processes", "4", "train.py", "--lr", "1e-4"]
    assert env == {}


def test_debug_sets_the_three_variables_and_accelerate_debug():
    argv, env = build_launch_command("c.yaml", "train.py", debug=True)
    assert env == {"NCCL_DEBUG": "INFO", "ACCELERATE_LOG_LEVEL": "INFO", "TORCH_DISTRIBUTED_DEBUG": "DETAIL"}
    assert argv.index("--debug") < argv.index("train.py")


def test_timeout_is_appended_to_the_script_args():
    argv, _ = build_launch_command("c.yaml", "train.py", ["--lr", "1"], timeout=1800)
    assert argv[-5:] == ["train.py", "--lr", "1", "--ddp_timeout", "1800"]


@pytest.mark.parametrize("given", [["--ddp_timeout", "1800"], ["--ddp_timeout=1800"]])
def test_same_timeout_given_twice_is_not_duplicated(given):
    argv, _ = build_launch_command("c.yaml", "train.py", given, timeout=1800)
    assert argv[argv.index("train.py") + 1 :] == given


@pytest.mark.parametrize("given", [["--ddp_timeout", "600"], ["--ddp_timeout=600"]])
def test_conflicting_timeout_is_refused(given):
    with pytest.raises(UserError, match="conflicts with `--ddp_timeout 600`"):
        build_launch_command("c.yaml", "train.py", given, timeout=1800)


def test_script_timeout_parsing():
    assert script_timeout(["--a", "1"]) is None
    assert script_timeout(["--ddp_timeout", "5"]) == "5"
    assert script_timeout(["--ddp_timeout=7"]) == "7"


def test_shell_line_quotes():
    assert shell_line(["python", "a b.py"], {"X": "1"}) == "X=1 python 'a b.py'"


# --- the CLI in process -------------------------------------------------------------------------------


def test_dry_run_prints_the_exact_command(tmp_path, script, capsys):
    cfg = write_config(tmp_path)
    rc = main(
        [
            "launch",
            cfg,
            "--num_processes",
            "2",
            "--mixed_precision",
            "no",
            "--debug",
            "--timeout",
            "900",
            "--dry_run",
            "--",
            script,
            "--lr",
            "1",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    expected = [
        *LAUNCHER,
        "--config_file",
        cfg,
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--debug",
        script,
        "--lr",
        "1",
        "--ddp_timeout",
        "900",
    ]
    assert shell_line(expected, DEBUG_ENV) in out
    for key, value in DEBUG_ENV.items():
        assert f"env {key}={value}" in out


def test_dry_run_json(tmp_path, script, capsys):
    cfg = write_config(tmp_path)
    assert main(["launch", cfg, "--dry_run", "--json", "--", script]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["argv"] == [*LAUNCHER, "--config_file", cfg, script] and data["env"] == {}


def test_options_before_config_work_too(tmp_path, script, capsys):
    cfg = write_config(tmp_path)
    assert main(["launch", "--dry_run", "--machine_rank", "0", cfg, script, "--x"]) == 0
    assert f"--machine_rank 0 {script} --x" in capsys.readouterr().out


def test_refuses_a_broken_config(tmp_path, script, capsys):
    cfg = write_config(tmp_path, distributed_type="DEEPSPEED", deepspeed_config={"zero_stage": 5})
    assert main(["launch", cfg, "--dry_run", "--", script]) == 1
    captured = capsys.readouterr()
    assert "refusing to launch" in captured.err and "zero_stage" in captured.err
    assert "Traceback" not in captured.err and captured.out == ""


def test_conflicting_timeout_is_refused_in_the_cli(tmp_path, script, capsys):
    cfg = write_config(tmp_path)
    assert main(["launch", cfg, "--timeout", "1800", "--dry_run", "--", script, "--ddp_timeout", "60"]) == 1
    assert "conflicts" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["launch"],  # no config
        ["launch", "CFG"],  # no script
        ["launch", "CFG", "--num_processes", "2", "SCRIPT"],  # options after CONFIG need `--`
        ["launch", "CFG", "--no_such_option", "--", "SCRIPT"],
        ["launch", "CFG", "--num_processes", "two", "--", "SCRIPT"],
        ["launch", "CFG", "--timeout", "-5", "--", "SCRIPT"],
        ["launch", "CFG", "--json", "--", "SCRIPT"],  # --json without --dry_run
    ],
)
def test_misuse_exits_2(tmp_path, script, capsys, argv):
    cfg = write_config(tmp_path)
    argv = [cfg if a == "CFG" else script if a == "SCRIPT" else a for a in argv]
    assert main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_missing_files_are_user_errors(tmp_path, script, capsys):
    assert main(["launch", str(tmp_path / "none.yaml"), "--", script]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["launch", write_config(tmp_path), "--", str(tmp_path / "none.py")]) == 1
    assert "training script" in capsys.readouterr().err


# --- one real launch ----------------------------------------------------------------------------------


@pytest.mark.distributed
def test_real_launch_two_cpu_processes(tmp_path, script, capfd):
    cfg = write_config(tmp_path)
    rc = main(["launch", cfg, "--timeout", "120", "--", script, "--x", "1"])
    out = capfd.readouterr().out
    assert rc == 0, out
    assert out.count("WORLD_SIZE 2 ['--x', '1', '--ddp_timeout', '120']") == 2


@pytest.mark.distributed
def test_real_launch_forwards_the_exit_code(tmp_path, capfd):
    failing = tmp_path / "fail.py"
    failing.write_text("import sys\nsys.exit(3)\n")
    cfg = write_config(tmp_path, num_processes=1, distributed_type="NO", use_cpu=True)
    # accelerate's simple launcher turns any failure of the script into its own exit status 1
    # (CalledProcessError); we forward accelerate's status unchanged.
    assert main(["launch", cfg, "--", str(failing)]) == 1
