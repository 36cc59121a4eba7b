"""disttune.extensions: stale op-build locks in a fake torch extensions cache, and the build-wait notice.

The holders are real processes (a child with the lock open, a child working in the op's folder); the
waiting process is torch's own ``cpp_extension.load`` stuck on a lock.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from disttune import extensions
from disttune.doctor import check_extension_locks
from disttune.extensions import extensions_root, find_locks, inspect_locks

OLD = time.time() - 600  # ten minutes ago


def make_lock(folder, age_s: float | None = 600):
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / "lock"
    lock.touch()
    if age_s is not None:
        for path in (folder, lock):
            os.utime(path, (time.time() - age_s, time.time() - age_s))
    return lock


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "torch_extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(root))
    return root


def test_root_is_the_env_variable_else_the_user_cache(tmp_path):
    assert extensions_root({"TORCH_EXTENSIONS_DIR": str(tmp_path)}) == tmp_path
    assert extensions_root({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "torch_extensions"
    assert extensions_root({"HOME": str(tmp_path)}) == tmp_path / ".cache" / "torch_extensions"


def test_locks_are_found_at_both_depths(tmp_path):
    direct = make_lock(tmp_path / "cpu_adam")  # TORCH_EXTENSIONS_DIR/<op>/lock
    tagged = make_lock(tmp_path / "py311_cu124" / "fused_adam")  # ~/.cache/torch_extensions/<py_cu>/<op>/lock
    (tmp_path / "py311_cu124" / "fused_adam" / "fused_adam.so").touch()
    assert find_locks(tmp_path) == sorted([direct, tagged])
    assert find_locks(tmp_path / "missing") == []


def test_an_old_lock_nobody_holds_is_stale_and_doctor_names_the_file(cache):
    lock = make_lock(cache / "py311_cpu" / "cpu_adam")
    (found,) = inspect_locks()
    assert found.path == lock and found.op == "cpu_adam" and found.holders == () and found.stale
    assert 590 < found.age_s < 700 and found.idle_s >= found.age_s - 1
    check = check_extension_locks()
    assert check.status == "fail" and str(lock) in check.detail and "10 min old" in check.detail
    assert f"`rm {lock}`" in check.fix


def test_a_fresh_lock_is_not_stale_yet(cache):
    make_lock(cache / "cpu_adam", age_s=None)  # created just now: a build may be starting
    (found,) = inspect_locks()
    assert not found.stale and found.age_s < 30
    assert check_extension_locks().status == "pass"


def test_recent_build_output_keeps_an_old_lock_alive(cache):
    lock = make_lock(cache / "cpu_adam")
    (lock.parent / "cpu_adam.o").write_text("object written just now")
    (found,) = inspect_locks()
    assert found.age_s > 500 and found.idle_s < 30 and not found.stale


def hold(lock, how: str) -> subprocess.Popen:
    """A live process that holds ``lock`` the way a build does; the path goes in by environment only, so
    that its command line does not name the folder."""
    code = {
        "open": "import os, time; fd = os.open(os.environ['LOCK'], os.O_RDONLY); print('ready', flush=True); "
        "time.sleep(60)",
        "cwd": "import time; print('ready', flush=True); time.sleep(60)",
    }[how]
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, "LOCK": str(lock)},
        cwd=lock.parent if how == "cwd" else None,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="holders are read from /proc")
@pytest.mark.parametrize("how", ["open", "cwd"])
def test_an_old_lock_a_live_process_holds_is_not_stale(cache, how):
    lock = make_lock(cache / "cpu_adam")
    proc = hold(lock, how)
    try:
        (found,) = inspect_locks()
        assert found.holders == (proc.pid,) and not found.stale
        check = check_extension_locks()
        assert check.status == "pass" and f"held by process {proc.pid}" in check.detail
    finally:
        proc.kill()
        proc.wait()
    (found,) = inspect_locks()  # the holder is gone: now the same lock is stale
    assert found.holders == () and found.stale


def test_no_cache_at_all_passes(cache):
    check = check_extension_locks()
    assert check.status == "pass" and str(cache) in check.detail


def wait_in_thread(source) -> threading.Thread:
    """torch's own ``cpp_extension.load`` (what DeepSpeed's ``jit_load`` calls) in a thread: it waits on the lock."""
    import torch.utils.cpp_extension as cpp_extension

    def load():
        try:
            cpp_extension.load(name="cpu_adam", sources=[str(source)])
        except Exception:
            pass  # once the lock is gone there is no built module to import: expected here

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    return thread


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="holders are read from /proc")
@pytest.mark.parametrize("held", [False, True])
def test_a_process_stuck_on_a_lock_says_so_and_names_the_file(cache, tmp_path, held):
    pytest.importorskip("torch")
    lock = make_lock(cache / "cpu_adam")  # the layout torch uses under TORCH_EXTENSIONS_DIR
    source = tmp_path / "cpu_adam.cpp"
    source.write_text("int x;\n")
    holder = hold(lock, "open") if held else None
    thread = wait_in_thread(source)
    lines = []
    try:
        notice = extensions.OpBuildNotice(every_s=3600, log=lines.append)  # ticked by hand below
        deadline = time.monotonic() + 30
        while not lines and time.monotonic() < deadline:
            notice.tick()
            time.sleep(0.05)
        notice.tick()
        notice.stop()
        assert thread.is_alive()  # still waiting: torch never gives up on a lock
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        lock.unlink()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(lines) == 2 and lines[0] == lines[1], lines  # said again at every look while the wait lasts
    assert lines[0].startswith(
        f"disttune: waiting for DeepSpeed to build op cpu_adam (lock {lock} held for 10 min "
    )
    assert lines[0].endswith(f", stop this launch, delete {lock} and launch again)")
    who = (
        f"by process {holder.pid}, still building; if that process is stuck"
        if held
        else "and no live process holds it: a killed build left it"
    )
    assert who in lines[0]


def test_a_build_is_announced_from_the_second_look_on(monkeypatch):
    monkeypatch.setattr(extensions, "_waits_and_builds", lambda: [("build", "fused_adam")])
    notice = extensions.OpBuildNotice(every_s=3600, log=lambda line: None)
    assert notice.tick() == []  # seen once: it may only be loading an op built before
    time.sleep(0.01)
    (line,) = notice.tick()
    assert line.startswith("disttune: DeepSpeed is building op fused_adam (for over 0 s;")
    notice.stop()


def test_notice_says_nothing_without_a_build_and_stops():
    notice = extensions.notify_op_builds(every_s=0.05, log=pytest.fail)
    time.sleep(0.2)
    assert notice.tick() == []
    notice.stop()
    assert not notice._thread.is_alive()


@pytest.mark.parametrize(("local_rank", "printed"), [(None, True), ("0", True), ("1", False)])
def test_by_default_one_process_per_machine_prints(monkeypatch, capsys, local_rank, printed):
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setattr(extensions, "_waits_and_builds", lambda: [("build", "fused_adam")])
    notice = extensions.notify_op_builds(every_s=3600)
    notice.tick()
    time.sleep(0.01)
    notice.tick()
    notice.stop()
    assert ("disttune: DeepSpeed is building op fused_adam" in capsys.readouterr().out) == printed
