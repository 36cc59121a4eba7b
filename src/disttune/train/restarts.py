"""Unattended runs: a job that restarts itself, and says why it did.

``accelerate launch --max_restarts N`` (or ``disttune launch ... --max_restarts N``) runs torchrun's elastic
agent: when a worker dies, the agent stops the others and starts them all again, at most N times, and
exports ``TORCHELASTIC_RESTART_COUNT`` to the new workers. The engine is torchrun's; disttune adds:

- a restarted worker resumes from the newest complete checkpoint in ``--output_dir`` by itself
  (``preflight.prepare_run``), whatever ``--resume_from_checkpoint`` said;
- a record of each restart: which rank ended the attempt, in which step, and why. Each attempt leaves in
  ``<output_dir>/.disttune/``:
    ``progress.json``          the last optimizer step finished and the world size (main process, each step);
    ``attempt-K/rank-R.json``  how rank R's attempt K ended: its exception, or the signal the launcher sent
                               it after another rank died (``secondary``). A rank killed outright (SIGKILL,
                               the OOM killer, a lost machine) leaves no file: that absence names it.
  At the start of attempt K > 0 the main process turns attempt K-1 into one entry of ``restarts.json``;
  ``run_summary.json`` carries the list as ``restarts``, and ``disttune launch`` names the step and the
  cause when the agent gives up;
- a process group that can form again after a restart (``init_restarted_process_group``): torch 2.13's
  agent hands every attempt the same store (``TORCHELASTIC_USE_AGENT_STORE``; rendezvous.py says "we
  create a new TCPStore for every retry", which does not hold when the launcher fixes the store's port, as
  accelerate does), so the restarted ranks read the dead ranks' addresses and gloo's connectFullMesh
  fails ("Connection refused") or waits. Measured here: 2 ranks, rank 1 SIGKILLed, ``--rdzv_backend c10d
  --max_restarts 1``: attempt 1 never formed its group; with a per-attempt key prefix it does.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from transformers import TrainerCallback

from disttune.train.strategy import rank_from_env

STATE_DIR = ".disttune"
RESTARTS_FILE = "restarts.json"
KILLED = (
    "ended without a Python exception: killed by a signal (SIGKILL, the OOM killer) or its machine was lost"
)


def restart_count(environ=os.environ) -> int:
    """How many times torchrun's elastic agent has restarted this job (0 for the first attempt)."""
    try:
        return int(environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def max_restarts(environ=os.environ) -> int:
    """``--max_restarts`` of this launch (0 without the elastic agent's restarts)."""
    try:
        return int(environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
    except ValueError:
        return 0


def init_restarted_process_group(environ=os.environ) -> bool:
    """In a restarted attempt, create the default process group on the agent's store under a prefix of
    its own (``disttune/attempt_K``), before accelerate would create it on the stale keys. Returns whether
    it did. accelerate (and DeepSpeed) then use the group as it is."""
    import torch
    import torch.distributed as dist

    attempt = restart_count(environ)
    if attempt == 0 or environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or dist.is_initialized():
        return False
    from datetime import timedelta

    world, rank = int(environ["WORLD_SIZE"]), int(environ["RANK"])
    timeout = timedelta(minutes=30)  # torch's default; --ddp_timeout is applied once the arguments are read
    store = dist.TCPStore(environ["MASTER_ADDR"], int(environ["MASTER_PORT"]), world, False, timeout=timeout)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(
        backend,
        store=dist.PrefixStore(f"disttune/attempt_{attempt}", store),
        rank=rank,
        world_size=world,
        timeout=timeout,
    )
    return True


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _read(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def record_end(output_dir: str | os.PathLike, cause: str, secondary: bool = False) -> None:
    """Note how this rank's attempt ended (an exception, or a signal from the launcher: ``secondary``)."""
    path = Path(output_dir) / STATE_DIR / f"attempt-{restart_count()}" / f"rank-{rank_from_env()}.json"
    if secondary and path.exists():
        return  # the first account of this rank's end is the one that matters
    try:
        _write(path, {"cause": cause, "secondary": secondary, "time": round(time.time(), 3)})
    except OSError:
        pass  # never let the record of a failure hide the failure


def exception_line(exc: BaseException, limit: int | None = 300) -> str:
    """``Type: first line of the message`` (cut at ``limit`` characters; the type alone for an empty message)."""
    message = (str(exc).strip().splitlines() or [""])[0][:limit]
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def cause_of(exc: BaseException) -> tuple[str, bool]:
    """``(cause, secondary)`` for an exception that ended this rank: a lost peer is secondary."""
    if isinstance(exc, SystemExit):
        return "stopped after a collective failed (another rank was lost)", True
    return exception_line(exc, limit=None), False


def describe_attempt(output_dir: str | os.PathLike, attempt: int) -> dict | None:
    """What ended ``attempt``: ``{attempt, failed_in_step, rank, cause}`` (None when it left no trace)."""
    state = Path(output_dir) / STATE_DIR
    progress = _read(state / "progress.json", {})
    if progress.get("attempt") != attempt and not (state / f"attempt-{attempt}").is_dir():
        return None
    world = int(progress.get("world_size") or 1)
    ends = {r: _read(state / f"attempt-{attempt}" / f"rank-{r}.json") for r in range(world)}
    primary = [(r, e["cause"]) for r, e in ends.items() if e and not e.get("secondary")]
    silent = [r for r, e in ends.items() if e is None]
    if primary:
        rank, cause = primary[0]
    elif silent:
        rank, cause = silent[0], KILLED
    else:
        rank, cause = None, "every rank was stopped by the launcher; the first cause was not recorded"
    step = progress.get("step", 0) if progress.get("attempt") == attempt else None
    return {
        "attempt": attempt,
        "failed_in_step": step + 1 if step is not None else None,
        "rank": rank,
        "cause": cause,
    }


def note_restart(output_dir: str | os.PathLike, resumed_from: str | None) -> str | None:
    """At the start of a restarted attempt (main process): record why the previous one ended, in
    ``restarts.json``. Returns the line for the log, or None on a first attempt."""
    attempt = restart_count()
    if attempt == 0:
        return None
    path = Path(output_dir) / STATE_DIR / RESTARTS_FILE
    entries = _read(path, [])
    if not any(e.get("restart") == attempt for e in entries):
        last = describe_attempt(output_dir, attempt - 1) or {
            "failed_in_step": None,
            "rank": None,
            "cause": "?",
        }
        entries.append(
            {
                "restart": attempt,
                "failed_in_step": last["failed_in_step"],
                "rank": last["rank"],
                "cause": last["cause"],
                "resumed_from": Path(resumed_from).name if resumed_from else None,
            }
        )
        _write(path, entries)
    entry = entries[-1]
    start = f"resuming from {entry['resumed_from']}" if entry["resumed_from"] else "starting at step 0"
    return (
        f"restart {attempt} of {max_restarts()}: rank {entry['rank']} failed in step "
        f"{entry['failed_in_step']} ({entry['cause']}); {start}"
    )


def read_restarts(output_dir: str | os.PathLike) -> list[dict]:
    """Every restart this run's job went through (``restarts.json``), oldest first."""
    return _read(Path(output_dir) / STATE_DIR / RESTARTS_FILE, [])


def clear(output_dir: str | os.PathLike) -> None:
    """A new job (not a restart) starts with no restart records of an earlier one (main process)."""
    import shutil

    if restart_count() == 0:
        shutil.rmtree(Path(output_dir) / STATE_DIR, ignore_errors=True)


def give_up_summary(output_dir: str | os.PathLike) -> str | None:
    """After the launcher gave up: one line naming the step and the cause of the last attempt's failure
    (and whether every attempt failed there), or None when the output folder holds no record."""
    state = Path(output_dir) / STATE_DIR
    progress = _read(state / "progress.json")
    if progress is None:
        return None
    last = describe_attempt(output_dir, int(progress.get("attempt", 0)))
    if last is None:
        return None
    history = read_restarts(output_dir)
    steps = {e.get("failed_in_step") for e in history} | {last["failed_in_step"]}
    every = len(steps) == 1 and history
    attempts = len(history) + 1
    where = f"in step {last['failed_in_step']}" + (f" in all {attempts} attempts" if every else "")
    return f"rank {last['rank']} failed {where}: {last['cause']}"


class Progress(TrainerCallback):
    """Where training is, on every rank: ``Progress.where()`` for the failure line (failures.py); on the
    main process it also writes ``.disttune/progress.json`` (attempt, last finished step, world size) for
    the restart records."""

    state = None  # the trainer's state, once training began (class-level: read where no trainer is at hand)
    ended = False
    phase: str | None = None  # work outside the training step under way ("in the held-out evaluation")

    def __init__(self, output_dir: str | os.PathLike, world_size: int):
        Progress.state, Progress.ended, Progress.phase = None, False, None  # a new run (``disttune train`` may run several)
        self.path = Path(output_dir) / STATE_DIR / "progress.json"
        self.world_size = world_size

    @classmethod
    def where(cls) -> str:
        """Where the run was: ``before the first step``, ``before training, in the held-out evaluation``,
        ``at step 7``, ``after training (step 80), in the held-out evaluation``, ..."""
        phase = f", {cls.phase}" if cls.phase else ""
        if cls.state is None:
            return f"before the first step{phase}"
        if cls.ended:
            return f"after training (step {cls.state.global_step}{phase or ', saving the model'})"
        if cls.phase and cls.state.global_step == 0:
            return f"before training{phase}"
        return f"at step {cls.state.global_step + 1}{phase}"

    @classmethod
    @contextmanager
    def during(cls, phase: str):
        """Name the work under way (outside the training step) for the failure line while it runs."""
        previous, cls.phase = cls.phase, phase
        try:
            yield
        finally:
            cls.phase = previous

    def _save(self, step: int) -> None:
        try:
            _write(self.path, {"attempt": restart_count(), "step": step, "world_size": self.world_size})
        except OSError:
            pass

    def on_train_begin(self, args, state, control, **kwargs):
        Progress.state, Progress.ended = state, False
        if state.is_world_process_zero:
            self._save(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._save(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        Progress.ended = True
