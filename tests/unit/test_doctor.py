"""disttune.doctor: every check in isolation, with fakes instead of hardware."""

from __future__ import annotations

import socket
from collections import namedtuple

import pytest

from disttune import doctor
from disttune.doctor import Check

A100 = {"index": 0, "name": "NVIDIA A100", "memory_gib": 79.3, "compute_capability": "8.0", "bf16": True}
V100 = {"index": 1, "name": "Tesla V100", "memory_gib": 31.7, "compute_capability": "7.0", "bf16": False}
Usage = namedtuple("Usage", "total used free")


def fake_shm(monkeypatch, size):
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda path: Usage(size, 0, size))


def test_shm_docker_default_fails_with_gpus_and_names_shm_size(monkeypatch):
    fake_shm(monkeypatch, 64 * 2**20)
    c = doctor.check_shm("/dev/shm", gpu_count=8)
    assert c.status == "fail" and "0.06 GiB" in c.detail and "--shm-size" in c.fix


def test_shm_small_without_gpus_is_a_warning(monkeypatch):
    fake_shm(monkeypatch, 64 * 2**20)
    assert doctor.check_shm("/dev/shm", gpu_count=0).status == "warn"


def test_shm_large_passes(monkeypatch):
    fake_shm(monkeypatch, 16 * 2**30)
    assert doctor.check_shm("/dev/shm", gpu_count=8).status == "pass"


def test_shm_real_helper_reads_a_path(tmp_path):
    assert doctor.shm_size_bytes(str(tmp_path)) > 0
    assert doctor.shm_size_bytes(str(tmp_path / "missing")) is None
    assert doctor.check_shm(str(tmp_path / "missing")).status == "warn"


@pytest.mark.parametrize(
    ("gpus", "config", "status"),
    [
        ([], {}, "warn"),  # CPU + gloo
        ([], {"use_cpu": True}, "pass"),
        ([A100], {"num_processes": 4, "num_machines": 1}, "fail"),
        ([A100] * 8, {"num_processes": 16, "num_machines": 2}, "pass"),  # 8 per machine
        ([A100] * 8, {"num_processes": 4}, "pass"),
        ([A100] * 2, {}, "pass"),
    ],
)
def test_gpus_vs_processes_per_machine(gpus, config, status):
    assert doctor.check_gpus(gpus, config).status == status


def test_gpus_fail_says_what_to_set():
    c = doctor.check_gpus([A100, A100], {"num_processes": 4, "num_machines": 1})
    assert "4 process(es) per machine" in c.detail and "num_processes to 2" in c.fix


def test_bf16_on_old_gpu_fails_and_points_to_fp16():
    c = doctor.check_precision([A100, V100], {"mixed_precision": "bf16"})
    assert c.status == "fail" and "Tesla V100" in c.detail and "fp16" in c.fix
    assert doctor.check_precision([A100], {"mixed_precision": "bf16"}).status == "pass"


def test_fp16_on_cpu_is_silently_ignored_warning():
    c = doctor.check_precision([], {"mixed_precision": "fp16"})
    assert c.status == "warn" and "fp32" in c.detail
    assert doctor.check_precision([], {"mixed_precision": "bf16"}).status == "pass"


def test_port_in_use_fails():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        c = doctor.check_port(port)
    assert c.status == "fail" and str(port) in c.detail and "--main_process_port" in c.fix


def test_free_port_passes_and_worker_nodes_skip_the_bind():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert doctor.check_port(port).status == "pass"
    assert doctor.check_port(port, machine_rank=1).status == "pass"


def test_probe_refused_means_reachable_and_bad_name_fails():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens
    assert doctor.check_reachable("127.0.0.1", port, timeout=1).status == "pass"
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        c = doctor.check_reachable("127.0.0.1", server.getsockname()[1], timeout=1)
    assert c.status == "pass" and "accepts" in c.detail


def test_nccl_timeout_warns_that_it_does_nothing_and_gives_the_real_knob():
    c = doctor.check_collective_timeout({"NCCL_TIMEOUT": "1800"})
    assert c.status == "warn" and "does nothing" in c.detail
    assert "--ddp_timeout" in c.fix and "InitProcessGroupKwargs" in c.fix


def test_timeout_env_variants():
    assert doctor.check_collective_timeout({}).status == "pass"
    assert doctor.check_collective_timeout({"TORCH_NCCL_ASYNC_ERROR_HANDLING": "0"}).status == "warn"
    c = doctor.check_collective_timeout({"NCCL_BLOCKING_WAIT": "1"})
    assert c.status == "warn" and "TORCH_NCCL_BLOCKING_WAIT" in c.fix


def test_no_library_in_the_stack_reads_nccl_timeout():
    """The claim behind the warning: grep torch/accelerate/transformers/deepspeed sources."""
    import importlib.util
    from pathlib import Path

    for pkg in ("torch", "accelerate", "transformers", "deepspeed"):
        spec = importlib.util.find_spec(pkg)
        if spec is None:
            continue
        root = Path(spec.origin).parent
        hits = [
            p
            for p in root.rglob("*.py")
            if '"NCCL_TIMEOUT"' in p.read_text(errors="ignore")
            or "'NCCL_TIMEOUT'" in p.read_text(errors="ignore")
        ]
        assert hits == [], f"{pkg} reads NCCL_TIMEOUT after all: {hits}"


def test_deepspeed_missing_fails_only_when_the_config_wants_it():
    assert doctor.check_deepspeed(None, config={"distributed_type": "DEEPSPEED"}).status == "fail"
    assert doctor.check_deepspeed(None, config={"distributed_type": "MULTI_GPU"}).status == "warn"


def test_deepspeed_prerequisites():
    ok = {"accelerator": "cuda", "cpu_adam": True}
    everything = lambda name: f"/usr/bin/{name}"  # noqa: E731
    nothing = lambda name: None  # noqa: E731
    assert doctor.check_deepspeed(ok, gpu_count=2, environ={}, which=everything).status == "pass"
    c = doctor.check_deepspeed(ok, gpu_count=2, environ={}, which=nothing)
    assert c.status == "warn" and "ninja" in c.detail and "CUDA_HOME" in c.detail
    assert "nvcc" not in doctor.check_deepspeed(ok, gpu_count=0, environ={}, which=nothing).detail
    offload = {"distributed_type": "DEEPSPEED", "deepspeed_config": {"offload_optimizer_device": "cpu"}}
    c = doctor.check_deepspeed({"cpu_adam": False}, config=offload, environ={}, which=everything)
    assert c.status == "fail" and "cpu_adam" in c.detail
    assert doctor.check_deepspeed({"error": "ImportError: x"}, config=offload).status == "fail"


def test_default_config_is_flagged_when_no_config_is_given(tmp_path):
    environ = {"HF_HOME": str(tmp_path)}
    assert doctor.check_default_config(environ).status == "pass"
    (tmp_path / "accelerate").mkdir()
    (tmp_path / "accelerate" / "default_config.yaml").write_text(
        "distributed_type: MULTI_GPU\nnum_processes: 8\n"
    )
    c = doctor.check_default_config(environ)
    assert c.status == "warn" and "num_processes: 8" in c.detail and "--config_file" in c.fix
    assert doctor.check_default_config(environ, config_path="mine.yaml").status == "pass"


def test_faq_guidance():
    scaling = doctor.check_scaling({"num_processes": 8}, cpu_count=4)
    assert scaling.status == "warn" and "disttune bench" in scaling.fix
    assert doctor.check_scaling({"num_processes": 2}, cpu_count=32).status == "info"
    hang = doctor.check_hang_debugging({})
    assert hang.status == "info"
    for needle in (
        "NCCL_DEBUG=INFO",
        "ACCELERATE_LOG_LEVEL=INFO",
        "TORCH_DISTRIBUTED_DEBUG=DETAIL",
        "py-spy dump",
        "disttune launch --debug",
    ):
        assert needle in hang.fix


def test_multinode_gives_the_fingerprint_to_compare():
    c = doctor.check_multinode("python=3.11 sha256:abc")
    assert c.status == "info" and "sha256:abc" in c.detail and "diff the fingerprint" in c.fix


def test_a_config_fault_is_reported_once_with_checks_own_words(tmp_path):
    from disttune.config import check_config

    path = tmp_path / "two.yaml"
    path.write_text(
        "distributed_type: MULTI_GPU\nnum_processes: 4\nnum_machines: 2\n"
        "main_process_ip: 127.0.0.1\ngradient_accumulation: 2\n"
    )
    config, checks = doctor.config_checks(str(path))
    findings = check_config(path)
    assert len(findings) == 2  # the unknown key (error), machine_rank missing (warning)
    assert [c.name for c in checks] == [f"config {f.key}" for f in findings] + ["config note"]
    assert [c.status for c in checks] == ["fail" if f.severity == "error" else "warn" for f in findings] + [
        "info"
    ]
    assert "loopback" in checks[-1].detail
    assert config["num_machines"] == 2
    assert doctor.config_checks(str(tmp_path / "missing.yaml"))[1][0].status == "fail"


def test_render_shows_fixes_and_a_summary():
    text = doctor.render_checks([Check("a", "pass", "fine", "unused"), Check("b", "fail", "broken", "do X")])
    assert "[PASS] a: fine" in text and "[FAIL] b: broken" in text and "fix: do X" in text
    assert "unused" not in text and text.endswith("1 pass, 1 fail.")


def test_run_checks_never_touches_the_network_without_probe_host(monkeypatch, tmp_path):
    monkeypatch.setattr(doctor, "probe_deepspeed", lambda: {"accelerator": "cpu", "cpu_adam": True})
    called = []
    monkeypatch.setattr(doctor, "check_reachable", lambda *a, **k: called.append(a))
    checks = doctor.run_checks(environ={"HF_HOME": str(tmp_path)}, port=1)
    assert called == []
    assert {c.status for c in checks} <= set(doctor.STATUSES)
    assert [c.name for c in checks][:4] == ["shared memory", "GPUs", "mixed precision", "rendezvous port"]


def test_probe_deepspeed_runs_in_a_child_and_answers():
    pytest.importorskip("deepspeed")
    probe = doctor.probe_deepspeed()
    assert "error" in probe or isinstance(probe.get("cpu_adam"), bool)


def test_cuda_visible_devices_is_shown():
    c = doctor.check_gpus([A100], {}, environ={"CUDA_VISIBLE_DEVICES": "3"})
    assert "CUDA_VISIBLE_DEVICES=3" in c.detail
