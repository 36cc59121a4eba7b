"""DeepSpeed's JIT-built ops and the lock file a killed build leaves behind.

torch builds each op (``cpu_adam``, ``fused_adam``, ...) the first time it is used, in
``<root>/<op>/`` where root is ``$TORCH_EXTENSIONS_DIR``, else
``~/.cache/torch_extensions/py<version>_<cpu|cuXYZ>`` (``torch.utils.cpp_extension._get_build_directory``).
The build is guarded by ``<root>/<op>/lock``: the builder creates it (``O_CREAT | O_EXCL``), keeps its file
descriptor open for the whole build and deletes it at the end; every other process loops
``while os.path.exists(lock): sleep(0.1)`` (``torch.utils.file_baton.FileBaton.wait``), with no timeout and
no output. A build killed mid-way (Ctrl-C at the wrong moment, SIGKILL, a preemption) leaves the lock
behind, and every later launch that needs the op waits on it forever, silently.

When is a lock stale? When no live process holds it and nothing in the op's folder has changed for
``grace`` seconds. A process holds it if it has the lock file open (the builder does, from creating it to
deleting it), works inside the op's folder (ninja and the compilers it starts run there) or names that
folder on its command line. Processes are read from ``/proc``: a build on another machine that shares
this cache cannot be seen, which the fix text says. Where ``/proc`` cannot be read, only the age counts.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

GRACE_S = 60.0  # a lock this young, or a folder written to this recently, may belong to a build just starting
NOTICE_EVERY_S = 30.0


@dataclass(frozen=True)
class OpLock:
    """One lock file in the extensions cache, and what holds it."""

    path: Path
    age_s: float  # since the lock was created (its mtime)
    idle_s: float  # since anything in the op's folder (the lock included) last changed
    holders: tuple[int, ...]  # live processes holding it (see the module docstring)
    stale: bool  # no holder and idle for at least the grace period: delete it

    @property
    def op(self) -> str:
        """The op's name (its build folder's name, e.g. ``cpu_adam``)."""
        return self.path.parent.name


def extensions_root(environ: Mapping[str, str] | None = None) -> Path:
    """Where torch builds extensions: ``$TORCH_EXTENSIONS_DIR``, else the user cache's ``torch_extensions``.

    Without ``TORCH_EXTENSIONS_DIR`` the ops sit one level deeper, under ``py<version>_<cpu|cuXYZ>/``;
    ``find_locks`` looks at both depths.
    """
    environ = os.environ if environ is None else environ
    if environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(environ["TORCH_EXTENSIONS_DIR"]).expanduser()
    cache = environ.get("XDG_CACHE_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".cache")
    return Path(cache).expanduser() / "torch_extensions"


def environment_extensions_dir(environ: Mapping[str, str] | None = None, prefix: str | None = None) -> Path:
    """This Python environment's own folder of op builds: ``<root>/py<version>_<hash of sys.prefix>``.

    torch's default, ``py<version>_<cpu|cuXYZ>``, is shared by every environment of the same Python: two
    virtual environments used in turn (two projects, or CI beside a checkout) rebuild each op at every switch
    (its build.ninja names the other environment's paths) while holding the lock every other launch waits on.
    """
    import hashlib

    key = hashlib.sha1((prefix or sys.prefix).encode()).hexdigest()[:10]
    return extensions_root(environ) / f"py{sys.version_info.major}{sys.version_info.minor}_{key}"


def use_environment_extensions_dir(environ=None) -> str | None:
    """Set ``TORCH_EXTENSIONS_DIR`` to ``environment_extensions_dir()`` unless the user set it (before
    DeepSpeed builds anything); returns the folder, or None when the user's setting stands."""
    environ = os.environ if environ is None else environ
    if environ.get("TORCH_EXTENSIONS_DIR"):
        return None
    folder = environment_extensions_dir(environ)
    environ["TORCH_EXTENSIONS_DIR"] = str(folder)
    return str(folder)


def find_locks(root: Path) -> list[Path]:
    """Every ``lock`` under ``root/<op>/`` and ``root/<py_tag>/<op>/``."""
    if not root.is_dir():
        return []
    return sorted({*root.glob("*/lock"), *root.glob("*/*/lock")})


def _holders(lock: Path, proc: Path) -> tuple[tuple[int, ...], bool]:
    """Live processes holding ``lock`` (see the module docstring), and whether every process could be read."""
    target, folder = os.path.realpath(lock), os.path.realpath(lock.parent)
    holders, complete = [], proc.is_dir()
    for entry in proc.iterdir() if complete else ():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            args = (entry / "cmdline").read_bytes().split(b"\0")
            fds = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except FileNotFoundError:
            continue  # exited meanwhile
        except PermissionError:
            complete = False  # another user's process: only the age can speak for it
            continue
        if (
            target in fds
            or cwd == folder
            or cwd.startswith(folder + os.sep)
            or any(folder.encode() in arg for arg in args)
        ):
            holders.append(int(entry.name))
    return tuple(holders), complete


def _idle_s(folder: Path, now: float) -> float:
    newest = 0.0
    for path in folder.rglob("*"):
        try:
            newest = max(newest, path.stat().st_mtime)
        except FileNotFoundError:
            continue
    return max(0.0, now - newest) if newest else float("inf")


def inspect_lock(lock: Path, grace_s: float = GRACE_S, proc: Path = Path("/proc")) -> OpLock | None:
    """Age, holders and staleness of one lock file (None when it is gone: the build finished)."""
    now = time.time()
    try:
        age = max(0.0, now - lock.stat().st_mtime)
    except FileNotFoundError:
        return None
    holders, _ = _holders(lock, proc)
    idle = _idle_s(lock.parent, now)
    return OpLock(lock, age, idle, holders, stale=not holders and min(age, idle) >= grace_s)


def inspect_locks(
    environ: Mapping[str, str] | None = None, grace_s: float = GRACE_S, proc: Path = Path("/proc")
) -> list[OpLock]:
    """Every lock in the extensions cache, with its age, its holders and whether it is stale."""
    found = (inspect_lock(lock, grace_s, proc) for lock in find_locks(extensions_root(environ)))
    return [lock for lock in found if lock is not None]


def human_duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _waits_and_builds() -> list[tuple[str, str]]:
    """What this process's other threads are doing in torch's extension builder:
    ``("wait", lock path)`` or ``("build", op name)``."""
    found = []
    for thread_id, frame in sys._current_frames().items():
        if thread_id == threading.get_ident():
            continue
        while frame is not None:
            code = frame.f_code
            if code.co_name == "wait" and code.co_filename.endswith("file_baton.py"):
                found.append(("wait", str(getattr(frame.f_locals.get("self"), "lock_file_path", ""))))
                break
            if code.co_name == "_jit_compile" and code.co_filename.endswith("cpp_extension.py"):
                found.append(("build", str(frame.f_locals.get("name", "?"))))
                break
            frame = frame.f_back
    return found


def _print_on_local_main(line: str) -> None:
    """Print on each machine's first process only: every rank waits on the same lock, one line says it."""
    if os.environ.get("LOCAL_RANK", "0") == "0":
        print(line, flush=True)


class OpBuildNotice:
    """A background thread that says, every ``every_s`` seconds, what an op build keeps this process waiting
    for: the lock it waits on (its age, whether anything holds it, the file to delete) or the build it runs.
    Nothing is printed while no op is being built or waited for. Use as a context manager, or ``stop()``."""

    def __init__(self, every_s: float = NOTICE_EVERY_S, log: Callable[[str], None] | None = None):
        self.every_s = every_s
        self.log = log or _print_on_local_main
        self._stop = threading.Event()
        self._since: dict[tuple[str, str], float] = {}
        self._thread = threading.Thread(target=self._run, name="disttune-op-build-notice", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.tick()
            except Exception as exc:  # a notice must never take the run down
                self.log(f"disttune: op build notice stopped: {type(exc).__name__}: {exc}")
                return

    def tick(self) -> list[str]:
        """Look once, log and return the notices (one per op build waited for or running)."""
        now = time.monotonic()
        seen = _waits_and_builds()
        self._since = {key: self._since.get(key, now) for key in seen}
        lines = []
        for kind, what in seen:
            if kind == "build":
                waited = now - self._since[kind, what]
                if waited > 0:  # from the second look on: a build seen once may just be loading a built op
                    lines.append(
                        f"disttune: DeepSpeed is building op {what} (for over {human_duration(waited)}; the "
                        "first build of an op takes minutes, later launches reuse it)"
                    )
                continue
            lock = Path(what)
            info = inspect_lock(lock)
            if info is None:
                continue  # released meanwhile
            # Deleting the lock under a waiting launch makes it import an op nobody built: it must start again.
            others = [pid for pid in info.holders if pid != os.getpid()]
            if others:
                state = f"by process {', '.join(map(str, others))}, still building; if that process is stuck"
            else:
                state = "and no live process holds it: a killed build left it"
            lines.append(
                f"disttune: waiting for DeepSpeed to build op {info.op} (lock {lock} held for "
                f"{human_duration(info.age_s)} {state}, stop this launch, delete {lock} and launch again)"
            )
        for line in lines:
            self.log(line)
        return lines

    def stop(self) -> None:
        """Stop the thread (idempotent)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> OpBuildNotice:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def notify_op_builds(
    every_s: float = NOTICE_EVERY_S, log: Callable[[str], None] | None = None
) -> OpBuildNotice:
    """Start saying what an op build keeps this process waiting for (see ``OpBuildNotice``); call ``stop()`` on
    the result, or use it as a ``with`` block. Start it before the arguments are parsed: on CPU, DeepSpeed
    builds its ``deepspeed_shm_comm`` op in ``init_distributed``, which transformers' ``TrainingArguments``
    reaches while it is being built; ``cpu_adam`` (offload) and ``fused_adam`` (GPU) come later, in
    ``deepspeed.initialize``. By default only each machine's first process (LOCAL_RANK 0) prints."""
    return OpBuildNotice(every_s, log)
