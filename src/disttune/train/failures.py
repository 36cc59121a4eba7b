"""A failure ends with its cause: which process failed first, at which step, why, and the likely fix.

When one process of a job fails, the others fail after it (a collective loses its peer, the launcher
stops them), and their messages would bury the first. So each failing process claims the job's first
failure in the launcher's rendezvous store (``faults.launcher_store``; one key per restart):

- the first to claim prints its cause: a ``UserError``'s own message (what, where, fix), or for anything
  else the traceback followed by ``disttune: rank R failed at step S: Type: message`` and ``fix:``;
- a later process with the same ``UserError`` (every rank read the same bad flag) prints nothing;
- a later process that stopped because of another's failure repeats the first cause, so that whichever
  process prints last, the last lines before the launcher's report are the cause.

Without a launcher store (a single process started with ``python``) the cause is printed as it is.
"""

from __future__ import annotations

import json
import sys
import traceback

from disttune.errors import UserError
from disttune.train.faults import launcher_store
from disttune.train.restarts import Progress, exception_line, restart_count
from disttune.train.strategy import rank_from_env

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


def likely_fix(text: str, rank: int) -> str:
    """The fix for an exception's ``Type: message`` text, from ``LIKELY_FIXES``."""
    for needles, fix in LIKELY_FIXES:
        if any(needle in text for needle in needles):
            return fix
    return DEFAULT_FIX.format(rank=rank)


def crash_summary(exc: BaseException, rank: int, where: str) -> str:
    """``disttune: rank R failed WHERE: Type: first line of the message`` and the likely fix."""
    text = exception_line(exc)
    return f"disttune: rank {rank} failed {where}: {text}\n  fix: {likely_fix(text, rank)}"


def _store_key() -> str:
    return f"disttune/first_failure/{restart_count()}"


def claim_first(text: str, rank: int, store=None) -> tuple[int, str] | None:
    """Record ``(rank, text)`` as the job's first failure unless one is recorded; returns the one recorded
    first (this one when this process was first), or None without a launcher store."""
    store = store if store is not None else launcher_store()
    if store is None:
        return None
    try:
        recorded = json.loads(store.compare_set(_store_key(), "", json.dumps([rank, text])).decode())
    except Exception:
        return None
    return int(recorded[0]), recorded[1]


def first_failure(store=None) -> tuple[int, str] | None:
    """The job's first failure as ``(rank, text)``, recorded by ``claim_first`` (None: none, or no store)."""
    store = store if store is not None else launcher_store()
    if store is None:
        return None
    try:
        if not store.check([_store_key()]):
            return None
        recorded = json.loads(store.get(_store_key()).decode())
    except Exception:
        return None
    return int(recorded[0]), recorded[1]


def _print(text: str) -> None:
    """Print to stderr, after clearing any progress bar left open (else it is redrawn below the text)."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.leave = False
        bar.close()
    sys.stdout.flush()
    print(text, file=sys.stderr, flush=True)


def report_user_error(exc: UserError, prog: str) -> None:
    """Print a user mistake once per job: not when another process already printed the same one."""
    text, rank = f"{prog}: error: {exc}", rank_from_env()
    first = claim_first(text, rank)
    if first is None or first[0] == rank or first[1] != text:
        _print(text)


def report_crash(exc: BaseException) -> None:
    """Print the traceback, then the cause and the likely fix; claim the job's first failure."""
    rank = rank_from_env()
    traceback.print_exception(exc)
    text = crash_summary(exc, rank, Progress.where())
    first = claim_first(text, rank)
    _print(text)
    if first is not None and first[0] != rank:  # this one followed another's failure
        _print(f"disttune: rank {rank} stopped after rank {first[0]} failed first:\n{first[1]}")


def repeat_first_failure() -> None:
    """This process stopped because another one failed (a collective lost its peer): say that one's cause
    again, so that it stays the last thing the job printed (see the module docstring)."""
    first = first_failure()
    if first is not None and first[0] != rank_from_env():
        _print(f"disttune: rank {rank_from_env()} stopped after rank {first[0]} failed first:\n{first[1]}")
