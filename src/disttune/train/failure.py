"""The failure record: which rank failed first, in which step, and why. One record, one rule for "first".

A ``Failure`` is made where the failure happens: the training script's exception handlers (an exception, a
user mistake, a non-finite step, a lost peer), the guard's signal handler (the launcher's SIGTERM after
another rank died) and the hang watchdog. ``record()`` writes it to

- the launcher's rendezvous store (``disttune/failure/<attempt>/<rank>``): the ranks that fail after it read
  it there and end their own output with the first cause (``report_crash``, ``report_user_error``,
  ``repeat_first``);
- the run folder (``.disttune/attempt-K/rank-R.json``, ``RunFolder.failure_file``): read back by the restart
  records (``restarts.py``), ``disttune launch``'s last line and ``run_summary.json``'s ``restarts``;
- torch elastic's error file (``TORCHELASTIC_ERROR_FILE``): the launcher's own "Root Cause" block then names
  the cause under plain ``accelerate launch`` too (instead of "error_file: <N/A>").

The rule for "first" (``first_of``), the same for the live message and the records: the earliest primary
failure (ties: the lowest rank); else a rank that left no record at all (killed outright: SIGKILL, the OOM
killer, a lost machine; or stopped, when a watchdog names it silent); else the earliest secondary one (a lost
peer, the launcher's SIGTERM). Standard library only: ``disttune launch`` reads records without torch.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

from disttune.errors import UserError
from disttune.run_folder import RunFolder, read_json, write_json
from disttune.train.args import PROG
from disttune.train.distributed import rank_from_env, restart_count, world_size_from_env

KILLED = (
    "ended without a Python exception: killed by a signal (SIGKILL, the OOM killer) or its machine was lost"
)
STOPPED_ANSWERING = (
    "stopped answering (hung, stopped or dead): rank {watcher}'s watchdog found no heartbeat from it"
)
LOST_PEER = "stopped after a collective failed (another rank was lost)"

# (what appears in "Type: message", likely fix). The first match wins; DEFAULT_FIX otherwise.
LIKELY_FIXES = (
    (
        ("OutOfMemoryError", "out of memory"),
        "lower --per_device_train_batch_size (raise --gradient_accumulation_steps to keep the global batch), "
        "turn on --gradient_checkpointing, or shard more: `disttune estimate` says which strategy fits",
    ),
    (("No space left on device",), "free disk space, or choose an --output_dir on a larger disk"),
    (("FileNotFoundError", "PermissionError"), "check the path and its permissions in the message above"),
)
DEFAULT_FIX = (
    "the traceback above (rank {rank}) shows where; rerun with --verbose (or DISTTUNE_DEBUG=1) to see "
    "every process's full log"
)


def exception_line(exc: BaseException, limit: int | None = 300) -> str:
    """``Type: first line of the message`` (cut at ``limit`` characters; the type alone for an empty message)."""
    message = (str(exc).strip().splitlines() or [""])[0][:limit]
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def likely_fix(text: str, rank: int) -> str:
    """The fix for an exception's ``Type: message`` text, from ``LIKELY_FIXES``."""
    for needles, fix in LIKELY_FIXES:
        if any(needle in text for needle in needles):
            return fix
    return DEFAULT_FIX.format(rank=rank)


@dataclass(frozen=True)
class Failure:
    """How one rank's attempt ended. ``step``: the optimizer step under way (None before the first);
    ``where``: the same in words, with the phase ("before training, in the held-out evaluation");
    ``secondary``: a consequence of another rank's failure; ``silent``: ranks a hang watchdog found silent."""

    rank: int
    step: int | None
    where: str
    cause: str
    secondary: bool = False
    time: float = field(default_factory=time.time)
    fix: str | None = None
    silent: tuple[int, ...] = ()
    message: str | None = (
        None  # what this rank printed for it, when not ``line()`` and the fix (a user error)
    )

    def line(self) -> str:
        """``rank 1 failed at step 6: RuntimeError: ...`` (what the job's last lines say)."""
        return f"rank {self.rank} failed {self.where}: {self.cause}"

    def to_dict(self) -> dict:
        return {**asdict(self), "silent": list(self.silent)}

    @classmethod
    def from_dict(cls, data: dict) -> Failure:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**{**known, "silent": tuple(data.get("silent") or ())})


class Where:
    """Where this process is, for its failure record: fed by the ``restarts.Progress`` callback (the trainer's
    state, the end of training) and by ``during`` (work outside the training step); read by ``here()``.
    Process-wide, like the failure it describes."""

    state = None  # the trainer's state, once training began
    ended = False
    phase: str | None = None  # work outside the training step under way ("in the held-out evaluation")
    output_dir: str | None = None  # where this process's failure record goes, once the run's checks passed

    @classmethod
    def reset(cls, output_dir: str | os.PathLike | None = None) -> None:
        cls.state, cls.ended, cls.phase, cls.output_dir = None, False, None, output_dir

    @classmethod
    def step(cls) -> int | None:
        """The optimizer step under way (the last one after training; None before the first)."""
        if cls.state is None or (cls.phase and cls.state.global_step == 0 and not cls.ended):
            return None
        return cls.state.global_step if cls.ended else cls.state.global_step + 1

    @classmethod
    def describe(cls) -> str:
        """``before the first step``, ``before training, in the held-out evaluation``, ``at step 7``,
        ``after training (step 80), in the held-out evaluation``, ..."""
        phase = f", {cls.phase}" if cls.phase else ""
        if cls.state is None:
            return f"before the first step{phase}"
        if cls.ended:
            return f"after training (step {cls.state.global_step}{phase or ', saving the model'})"
        if cls.phase and cls.state.global_step == 0:
            return f"before training{phase}"
        return f"at step {cls.state.global_step + 1}{phase}"


@contextmanager
def during(phase: str):
    """Name the work under way (outside the training step) for the failure record while it runs."""
    previous, Where.phase = Where.phase, phase
    try:
        yield
    finally:
        Where.phase = previous


def here(cause: str, secondary: bool = False, fix: str | None = None, message: str | None = None) -> Failure:
    """A failure of this process, where it is now (``Where``)."""
    step, where = Where.step(), Where.describe()
    return Failure(rank_from_env(), step, where, cause, secondary, time.time(), fix, message=message)


def at_step(step: int | None) -> str:
    return f"at step {step}" if step is not None else "before the first step"


def first_of(failures: dict[int, Failure | None], world_size: int) -> Failure | None:
    """The job's first failure among ``{rank: record or None}`` (the rule of the module docstring).

    A rank missing from ``failures`` or mapped to None left no record; its step is taken from the records
    that name it silent, else from the others' (``None`` when nothing says)."""
    known = [f for f in failures.values() if f is not None]
    primary = sorted((f for f in known if not f.secondary), key=lambda f: (f.time, f.rank))
    if primary:
        return primary[0]
    silent = [r for r in range(world_size) if failures.get(r) is None]
    if silent:
        rank = silent[0]
        watchers = sorted((f for f in known if rank in f.silent), key=lambda f: (f.time, f.rank))
        if watchers:
            watcher = watchers[0]
            cause = STOPPED_ANSWERING.format(watcher=watcher.rank)
            return Failure(rank, watcher.step, at_step(watcher.step), cause, time=watcher.time)
        steps = [f.step for f in known if f.step is not None]
        step = min(steps) if steps else None
        return Failure(rank, step, at_step(step), KILLED, time=min((f.time for f in known), default=0.0))
    secondary = sorted(known, key=lambda f: (f.time, f.rank))
    return secondary[0] if secondary else None


# --- writing ----------------------------------------------------------------------------------------------


def launcher_store(timeout_s: float = 5.0):
    """A private client of the launcher's rendezvous store (own socket, short timeout), or None
    (not launched by torch elastic / accelerate, or the store cannot be reached)."""
    try:
        from torch.distributed import TCPStore

        return TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            is_master=False,
            timeout=timedelta(seconds=timeout_s),
        )
    except Exception:
        return None


def _store_key(rank: int, attempt: int | None = None) -> str:
    return f"disttune/failure/{restart_count() if attempt is None else attempt}/{rank}"


def record(
    failure: Failure, output_dir: str | os.PathLike | None = None, store=None, to_store: bool = True
) -> None:
    """Write ``failure`` to the run folder (``output_dir``, else ``Where.output_dir``: none before the run's
    checks passed, so a refused run writes nothing into another run's folder), the launcher's store and
    torch elastic's error file.

    A rank's first account of its end is the one kept: a secondary record never replaces an earlier one.
    Never raises: the record of a failure must not hide the failure."""
    output_dir = output_dir if output_dir is not None else Where.output_dir
    if output_dir is not None:
        path = RunFolder(output_dir).failure_file(restart_count(), failure.rank)
        try:
            if not (failure.secondary and path.exists()):
                write_json(path, failure.to_dict())
        except OSError:
            pass
    if to_store:
        store = store if store is not None else launcher_store()
        try:
            if store is not None:
                store.compare_set(_store_key(failure.rank), "", json.dumps(failure.to_dict()))
        except Exception:
            pass
    write_error_file(failure)


def write_error_file(failure: Failure, first: Failure | None = None) -> None:
    """torch elastic's error file for this process (``TORCHELASTIC_ERROR_FILE``): the launcher's report shows
    its text as the traceback and picks the earliest one as the "Root Cause"."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    shown = first if first is not None and first.rank != failure.rank else failure
    text = printed(shown)
    if shown is not failure:
        text = f"disttune: rank {failure.rank} stopped after rank {shown.rank} failed first:\n{text}"
    data = {
        "message": {"message": text, "extraInfo": {"py_callstack": text, "timestamp": str(int(failure.time))}}
    }
    try:
        Path(path).write_text(json.dumps(data))
    except OSError:
        pass


# --- reading ----------------------------------------------------------------------------------------------


def live_failures(store=None, world_size: int | None = None) -> dict[int, Failure | None]:
    """The records in the launcher's store for this attempt, by rank (None: that rank wrote none yet)."""
    store = store if store is not None else launcher_store()
    world = world_size or world_size_from_env()
    out: dict[int, Failure | None] = dict.fromkeys(range(world))
    if store is None:
        return out
    for rank in range(world):
        try:
            if store.check([_store_key(rank)]):
                out[rank] = Failure.from_dict(json.loads(store.get(_store_key(rank)).decode()))
        except Exception:
            continue
    return out


def live_first(store=None) -> Failure | None:
    """The first failure among the records already in the store (ranks not yet heard from are not counted
    as killed: the job is still ending)."""
    known = {r: f for r, f in live_failures(store).items() if f is not None}
    return first_of(known, world_size=0)  # 0: no rank is inferred silent from a missing record


def attempt_failures(
    output_dir: str | os.PathLike, attempt: int, world_size: int
) -> dict[int, Failure | None]:
    """The records of ``attempt`` in the run folder, by rank (None: that rank left none)."""
    folder = RunFolder(output_dir)
    out = {}
    for rank in range(world_size):
        data = read_json(folder.failure_file(attempt, rank))
        out[rank] = Failure.from_dict(data) if isinstance(data, dict) and "cause" in data else None
    return out


# --- the records of an attempt, read back (restarts.json, disttune launch) ------------------------


def describe_attempt(output_dir: str | os.PathLike, attempt: int) -> dict | None:
    """What ended ``attempt``: ``{attempt, failed_in_step, rank, cause}`` (None when it left no trace), by
    ``failure.first_of`` over the ranks' records; a rank without one takes its step from ``progress.json``."""
    folder = RunFolder(output_dir)
    progress = read_json(folder.progress, {})
    if progress.get("attempt") != attempt and not folder.attempt(attempt).is_dir():
        return None
    world = int(progress.get("world_size") or 1)
    first = first_of(attempt_failures(output_dir, attempt, world), world)
    if first is None:
        return {"attempt": attempt, "failed_in_step": None, "rank": None, "cause": "?"}
    step = first.step
    if step is None and first.cause == KILLED and progress.get("attempt") == attempt:
        step = progress.get("step", 0) + 1  # killed with no other record: the step under way on rank 0
    return {"attempt": attempt, "failed_in_step": step, "rank": first.rank, "cause": first.cause}


def read_restarts(output_dir: str | os.PathLike) -> list[dict]:
    """Every restart this run's job went through (``restarts.json``), oldest first."""
    return read_json(RunFolder(output_dir).restarts, [])


def give_up_summary(output_dir: str | os.PathLike) -> str | None:
    """After the launcher gave up: one line naming the step and the cause of the last attempt's failure
    (and whether every attempt failed there), or None when the output folder holds no record."""
    progress = read_json(RunFolder(output_dir).progress)
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


# --- printing ---------------------------------------------------------------------------------------------


def _print(text: str) -> None:
    """Print to stderr, after clearing any progress bar left open (else it is redrawn below the text)."""
    try:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.leave = False
            bar.close()
    except ImportError:
        pass
    sys.stdout.flush()
    print(text, file=sys.stderr, flush=True)


def printed(failure: Failure) -> str:
    """What the rank printed for ``failure``: its message, or the line and the fix."""
    if failure.message:
        return failure.message
    return f"disttune: {failure.line()}" + (f"\n  fix: {failure.fix}" if failure.fix else "")


def _followed(failure: Failure, first: Failure | None) -> str | None:
    if first is None or first.rank == failure.rank:
        return None
    return f"disttune: rank {failure.rank} stopped after rank {first.rank} failed first:\n{printed(first)}"


def report_crash(exc: BaseException) -> Failure:
    """Print the traceback, then the cause and the likely fix; record the failure; when another rank failed
    first, end with its cause."""
    traceback.print_exception(exc)
    cause = exception_line(exc)
    failure = here(cause, fix=likely_fix(cause, rank_from_env()))
    store = launcher_store()
    record(failure, store=store)
    _print(printed(failure))
    first = live_first(store)
    followed = _followed(failure, first)
    if followed:
        write_error_file(failure, first)
        _print(followed)
    return failure


def report_user_error(exc: UserError, prog: str = PROG) -> None:
    """Print a user mistake once per job: not when another rank already recorded the same one first."""
    text = f"{prog}: error: {exc}"
    store = launcher_store()
    failure = here(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, message=text)
    record(failure, store=store)
    first = live_first(store)
    if first is None or first.rank == failure.rank or first.cause != failure.cause:
        _print(text)


def report_lost_peer() -> None:
    """This rank stopped because another one failed (a collective lost its peer): record that, and say the
    first rank's cause again, so that it stays the last thing the job printed."""
    store = launcher_store()
    failure = here(LOST_PEER, secondary=True)
    record(failure, store=store)
    first = live_first(store)
    followed = _followed(failure, first)
    if followed:
        write_error_file(failure, first)
        _print(followed)
