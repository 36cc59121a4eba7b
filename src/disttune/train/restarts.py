"""Unattended runs: a job that restarts itself, and says why it did.

``accelerate launch --max_restarts N`` (or ``disttune launch ... --max_restarts N``) runs torchrun's elastic
agent: when a worker dies, the agent stops the others and starts them all again, at most N times, and
exports ``TORCHELASTIC_RESTART_COUNT`` to the new workers. The engine is torchrun's; disttune adds:

- a restarted worker resumes from the newest complete checkpoint in ``--output_dir`` by itself
  (``prepare.prepare_run``), whatever ``--resume_from_checkpoint`` said;
- a record of each restart: which rank ended the attempt, in which step, and why. Each attempt leaves in
  the run folder's ``.disttune/`` (``disttune.run_folder``) ``progress.json`` (the last optimizer step
  finished and the world size; main process, each step) and one failure record per rank that failed
  (``failure.py``: its exception, or the signal the launcher sent it after another rank died; a rank killed
  outright leaves none, and that absence names it). At the start of attempt K > 0 the main process turns
  attempt K-1 into one entry of ``restarts.json`` with ``failure.first_of``, the rule the live message
  follows too; ``run_summary.json`` carries the list as ``restarts``, and ``disttune launch`` names the
  step and the cause when the agent gives up (``give_up_summary``);
- a process group that can form again after a restart (``init_restarted_process_group``): torch 2.13's
  agent hands every attempt the same store (``TORCHELASTIC_USE_AGENT_STORE``; rendezvous.py says "we
  create a new TCPStore for every retry", which does not hold when the launcher fixes the store's port, as
  accelerate does), so the restarted ranks read the dead ranks' addresses and gloo's connectFullMesh
  fails ("Connection refused") or waits. Measured here: 2 ranks, rank 1 SIGKILLed, ``--rdzv_backend c10d
  --max_restarts 1``: attempt 1 never formed its group; with a per-attempt key prefix it does.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

from transformers import TrainerCallback

from disttune.run_folder import RunFolder, read_json, write_json
from disttune.train.distributed import max_restarts, restart_count
from disttune.train.failure import Where, describe_attempt


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


def note_restart(output_dir: str | os.PathLike, resumed_from: str | None) -> str | None:
    """At the start of a restarted attempt (main process): record why the previous one ended, in
    ``restarts.json``. Returns the line for the log, or None on a first attempt."""
    attempt = restart_count()
    if attempt == 0:
        return None
    path = RunFolder(output_dir).restarts
    entries = read_json(path, [])
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
        write_json(path, entries)
    entry = entries[-1]
    start = f"resuming from {entry['resumed_from']}" if entry["resumed_from"] else "starting at step 0"
    return (
        f"restart {attempt} of {max_restarts()}: rank {entry['rank']} failed in step "
        f"{entry['failed_in_step']} ({entry['cause']}); {start}"
    )


def clear(output_dir: str | os.PathLike) -> None:
    """A new job (not a restart) starts with no restart records of an earlier one (main process)."""
    if restart_count() == 0:
        shutil.rmtree(RunFolder(output_dir).state, ignore_errors=True)


class Progress(TrainerCallback):
    """Where training is, on every rank: it feeds ``failure.Where`` (the step of a failure record); on the
    main process it also keeps ``progress.json`` (attempt, last finished step, world size) for the restart
    records, written by a thread of its own: no file is written on the training thread during a step."""

    def __init__(self, output_dir: str | os.PathLike, world_size: int):
        Where.reset(output_dir)  # a new run (``disttune train`` may run several in one process)
        self.path = RunFolder(output_dir).progress
        self.world_size = world_size
        self._step: int | None = None
        self._changed = threading.Event()
        self._writer: threading.Thread | None = None

    def _save(self, step: int) -> None:
        try:
            write_json(self.path, {"attempt": restart_count(), "step": step, "world_size": self.world_size})
        except OSError:
            pass

    def _write_changes(self) -> None:
        while True:
            self._changed.wait()
            self._changed.clear()
            step = self._step
            if step is None:
                return
            self._save(step)

    def on_train_begin(self, args, state, control, **kwargs):
        Where.state, Where.ended = state, False
        if state.is_world_process_zero:
            self._save(state.global_step)
            self._writer = threading.Thread(target=self._write_changes, name="disttune-progress", daemon=True)
            self._writer.start()

    def on_step_end(self, args, state, control, **kwargs):
        if self._writer is not None:
            self._step = state.global_step
            self._changed.set()

    def on_train_end(self, args, state, control, **kwargs):
        Where.ended = True
        if self._writer is not None:
            self._step = None  # stop the writer, then write the last step here
            self._changed.set()
            self._writer.join(timeout=5)
            self._writer = None
            self._save(state.global_step)
