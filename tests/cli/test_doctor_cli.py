"""`disttune doctor` in process: exit codes, JSON, a broken config, the port and timeout checks."""

from __future__ import annotations

import json
import socket

import pytest

from disttune import doctor
from disttune.bench import free_port  # the project's one free-port helper
from disttune.cli import main


@pytest.fixture(autouse=True)
def _quick(monkeypatch, tmp_path):
    """No deepspeed subprocess, no default accelerate config from the real home, no stray env."""
    monkeypatch.setattr(doctor, "probe_deepspeed", lambda: {"accelerator": "cpu", "cpu_adam": True})
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for name in (
        "NCCL_TIMEOUT",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING",
        "NCCL_BLOCKING_WAIT",
        "NCCL_ASYNC_ERROR_HANDLING",
    ):
        monkeypatch.delenv(name, raising=False)


def cpu_config(tmp_path, **extra) -> str:
    # MULTI_GPU on a machine without GPUs runs N CPU processes over gloo (MULTI_CPU would start one)
    lines = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "MULTI_GPU",
        "num_processes": 2,
        "num_machines": 1,
        "machine_rank": 0,
        "mixed_precision": "no",
        "use_cpu": False,
        "main_process_ip": "127.0.0.1",
        "main_process_port": free_port(),
        **extra,
    }
    path = tmp_path / "cpu.yaml"
    path.write_text(json.dumps(lines))  # JSON is YAML
    return str(path)


def test_doctor_json_passes_on_a_good_cpu_config(tmp_path, capsys):
    assert main(["doctor", cpu_config(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True
    assert all(set(c) == {"name", "status", "detail", "fix"} for c in data["checks"])
    assert not [c for c in data["checks"] if c["status"] == "fail"]


def test_doctor_fails_on_a_broken_config(tmp_path, capsys):
    path = cpu_config(tmp_path, distributed_type="DEEPSPEED", deepspeed_config={"zero_stage": 5})
    assert main(["doctor", path]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] config deepspeed_config.zero_stage" in out


def test_doctor_fails_when_the_rendezvous_port_is_taken(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        assert main(["doctor", "--port", str(busy.getsockname()[1])]) == 1
    assert "[FAIL] rendezvous port" in capsys.readouterr().out


def test_doctor_warns_about_nccl_timeout(monkeypatch, capsys):
    monkeypatch.setenv("NCCL_TIMEOUT", "1800")
    assert main(["doctor", "--port", str(free_port())]) == 0
    out = capsys.readouterr().out
    assert "[WARN] collective timeout: NCCL_TIMEOUT=1800 does nothing" in out and "--ddp_timeout" in out


def test_doctor_probes_only_the_host_it_is_given(capsys):
    port = free_port()
    assert main(["doctor", "--probe_host", "127.0.0.1", "--port", str(port), "--json"]) == 0
    names = [c["name"] for c in json.loads(capsys.readouterr().out)["checks"]]
    assert "main node reachable" in names
    assert main(["doctor", "--port", str(port), "--json"]) == 0
    assert "main node reachable" not in [c["name"] for c in json.loads(capsys.readouterr().out)["checks"]]


def test_doctor_missing_config_is_a_user_error(tmp_path, capsys):
    assert main(["doctor", str(tmp_path / "nope.yaml")]) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


def test_doctor_bad_port_is_argparse_misuse(capsys):
    assert main(["doctor", "--port", "abc"]) == 2


def test_two_machine_config_without_address_is_reported_once(tmp_path, capsys):
    path = cpu_config(tmp_path, num_machines=2, num_processes=4, main_process_ip=None)
    main(["doctor", path, "--json"])
    checks = json.loads(capsys.readouterr().out)["checks"]
    assert [c["name"] for c in checks if "main_process_ip" in c["name"] + c["detail"]] == [
        "config main_process_ip"
    ]


@pytest.mark.parametrize("text", ["a: &a [*a, *a]\n", "a: " + "[" * 5000 + "]" * 5000 + "\n"])
def test_doctor_refuses_hostile_yaml_in_one_line(tmp_path, capsys, text):
    path = tmp_path / "evil.yaml"
    path.write_text(text)
    assert main(["doctor", str(path)]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] config: " in out and "refused" in out and "Traceback" not in out
