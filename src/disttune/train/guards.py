"""Guards around the training step: preemption signals, non-finite steps, hung ranks.

``DisttuneTrainer`` (``trainer.py``) adds these callbacks and the per-step hooks they need.

- ``StepGuard`` (a ``TrainerCallback``): once per optimizer step, one small all-reduce tells every rank
  (a) whether any rank received SIGTERM/SIGINT (then all save a checkpoint at this step's end and stop
  together; the signal may reach one rank only) and (b) which ranks saw a non-finite loss or gradient
  (then all stop before the optimizer step, naming the step, the ranks and the likely cause, or, with
  ``--skip_nonfinite_steps``, all skip the update).
- ``HangWatchdog``: when no step completes for ``--hang_dump_s`` seconds, writes this rank's Python
  stacks to ``<output_dir>/hang_rank{r}.txt``, names the ranks that stopped answering, records the failure
  (``failure.py``: the silent rank is the first failure) and leaves with ``os._exit(1)``, so that the
  launcher tears the job down. The collective timeout alone does not do
  this on CPU: transformers does not pass ``--ddp_timeout`` to the gloo group (see
  ``apply_collective_timeout``).

Test-only fault injection (documented, off unless set): ``DISTTUNE_TEST_FAULT="action@step[:rank[:attempt]],..."``
with action one of ``nan`` (non-finite loss), ``sigterm``, ``sigstop``, ``sigkill``, ``crash`` (a
``RuntimeError``; these four at the start of the step), ``sigkill_in_save`` (after the checkpoint files of
that step are written, before the mark); ``attempt`` limits it to one attempt of a job restarted by torchrun
(``TORCHELASTIC_RESTART_COUNT``).
"""

from __future__ import annotations

import faulthandler
import math
import os
import signal
import sys
import threading
import time
from datetime import timedelta

from transformers import TrainerCallback

from disttune.errors import UserError
from disttune.run_folder import RunFolder
from disttune.train.distributed import rank_from_env, world_size_from_env
from disttune.train.failure import STOPPED_ANSWERING, Failure, at_step, launcher_store, record

TEST_FAULT_ENV = "DISTTUNE_TEST_FAULT"
MAX_CONSECUTIVE_SKIPS = 10


class NonFiniteError(UserError):
    """A non-finite loss or gradient stopped the run."""


class TrainingStopped(Exception):
    """A signal stopped the run after a checkpoint was saved (not a failure)."""

    def __init__(self, message: str, checkpoint: str | None):
        super().__init__(message)
        self.checkpoint = checkpoint


def test_faults(environ=os.environ) -> dict[tuple[str, int], bool]:
    """The faults injected for this rank: ``{(action, step): True}`` (tests only)."""
    faults = {}
    for item in filter(None, (environ.get(TEST_FAULT_ENV) or "").split(",")):
        action, _, where = item.strip().partition("@")
        step, _, rest = where.partition(":")
        rank, _, attempt = rest.partition(":")
        attempt_now = environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        if (not rank or int(rank) == rank_from_env()) and (not attempt or attempt == attempt_now):
            faults[(action, int(step))] = True
    return faults


def inject_test_fault(stage: str, step: int) -> None:
    """Carry out an injected process fault for ``stage`` at ``step`` (tests only)."""
    faults = test_faults()
    if stage == "after_write" and faults.get(("sigkill_in_save", step)):
        os.kill(os.getpid(), signal.SIGKILL)
    if stage == "step_begin":
        for action, sig in (
            ("sigterm", signal.SIGTERM),
            ("sigkill", signal.SIGKILL),
            ("sigstop", signal.SIGSTOP),
        ):
            if faults.get((action, step)):
                os.kill(os.getpid(), sig)
        if faults.get(("crash", step)):
            raise RuntimeError(f"injected crash at step {step} on rank {rank_from_env()} ({TEST_FAULT_ENV})")


def likely_cause(args) -> str:
    """What usually makes a step non-finite, for the error message."""
    causes = []
    if getattr(args, "fp16", False) or os.environ.get("ACCELERATE_MIXED_PRECISION") == "fp16":
        causes.append("fp16 overflow: train in bf16 (--mixed_precision bf16) if the hardware has it")
    causes.append(
        f"learning rate too high (--learning_rate {args.learning_rate:g}): lower it or warm up longer"
    )
    causes.append("bad data (empty or extreme examples)")
    return "; ".join(causes)


def apply_collective_timeout(seconds: float) -> bool:
    """Give the default process group the ``--ddp_timeout`` transformers forgets on the CPU/gloo path.

    ``TrainingArguments`` passes ``timeout`` to accelerate only for GPU and DeepSpeed setups; with
    ``ACCELERATE_USE_CPU`` the group keeps torch's 30-minute default, so a peer that stops answering
    blocks the others for half an hour. Returns whether a group was there to set.
    """
    import torch.distributed as dist
    from torch.distributed import distributed_c10d as c10d

    if not (dist.is_available() and dist.is_initialized()):
        return False
    c10d._set_pg_timeout(timedelta(seconds=seconds), c10d._get_default_group())
    return True


class StepGuard(TrainerCallback):
    """Signals and non-finite values, agreed on by every rank once per optimizer step.

    Nothing here reads a device value back during the step: ``note_loss`` (called by
    ``DisttuneTrainer.compute_loss``) keeps "this rank's loss was not finite" as a device tensor, and the
    gradients are judged by the one norm the trainer computes anyway before every optimizer step
    (``note_grad_norm``, from ``DisttuneTrainer._get_grad_norm``), not by a scan of every gradient. The one
    host read is the agreed flag vector in ``on_pre_optimizer_step``: one synchronisation per optimizer step.
    """

    def __init__(self, trainer, skip_nonfinite: bool = False):
        self.trainer = trainer
        self.skip_nonfinite = skip_nonfinite
        self.signal_name: str | None = None
        self._signal_time = 0.0
        self.nonfinite_local = False  # False, or a boolean device tensor (any micro-step's loss non-finite)
        self.grad_norm = None  # this step's total gradient norm: a device tensor or a float (DeepSpeed)
        self._consecutive_skips = 0
        self.skipped_steps: list[int] = []
        self.stopped_by: str | None = None
        self._previous_handlers: dict = {}

    # --- per-rank observations -------------------------------------------------------------------
    def _on_signal(self, signum, frame):
        name = signal.Signals(signum).name
        now = time.monotonic()
        if self.signal_name is not None and now - self._signal_time > 3:
            signal.signal(signum, signal.SIG_DFL)  # asked twice: leave now
            os.kill(os.getpid(), signum)
            return
        if self.signal_name is None:
            self.signal_name, self._signal_time = name, now
            # After another rank dies, torchrun's agent stops the others with SIGTERM: not this rank's fault.
            step = self.trainer.state.global_step + 1
            # In a signal handler: the run folder and the error file only (no socket to the store here).
            failure = Failure(rank_from_env(), step, at_step(step), f"received {name}", secondary=True)
            record(failure, self.trainer.args.output_dir, to_store=False)
            print(
                f"disttune: rank {rank_from_env()}: {name} received: saving a checkpoint at the end of this step, "
                "then stopping (send it again after 3 s to stop at once).",
                file=sys.stderr,
                flush=True,
            )

    def note_loss(self, loss) -> None:
        """Remember, on the loss's device, whether this micro-step's loss is non-finite (no host read)."""
        import torch

        bad = ~torch.isfinite(loss.detach()).all()
        self.nonfinite_local = bad if self.nonfinite_local is False else self.nonfinite_local | bad

    def note_grad_norm(self, norm) -> None:
        """The total gradient norm the trainer computed for this step (before any clipping)."""
        self.grad_norm = norm

    def _grads_nonfinite(self, device):
        """This rank's "gradients not finite" as an int or a device tensor, from the step's gradient norm
        (a non-finite gradient makes the norm non-finite). Without one (a trainer path that computed none),
        the norm is computed here: one fused reduction, still no host read."""
        import torch

        norm = self.grad_norm
        if norm is None and not self.trainer.is_deepspeed_enabled:
            grads = [p.grad for p in self.trainer.model.parameters() if p.grad is not None]
            grads = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
            norm = torch.nn.utils.get_total_norm(grads) if grads else None
        if norm is None:
            return 0
        if not torch.is_tensor(norm):
            return int(not math.isfinite(float(norm)))
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor norm
            norm = norm.full_tensor()
        return (~torch.isfinite(norm.detach())).to(device=device, dtype=torch.int32)

    def _agree(self, args) -> tuple[dict[int, str], list[int], list[int]]:
        """One all-reduce and one host read: the signal each rank got (by rank), the ranks with a non-finite
        loss, and those with non-finite gradients (under DDP one rank's NaN loss reaches every rank's
        gradients).

        Each rank fills its own slot of a zero vector on the device (scalar fills and device-to-device
        copies, no synchronisation); a sum over ranks (accelerate's ``reduce``) gives every rank every slot.
        (``set_trigger``/``check_trigger`` carry one bit, not who saw what.)
        """
        import torch
        from accelerate.state import PartialState
        from accelerate.utils import reduce

        state = PartialState()
        world, rank = state.num_processes, state.process_index
        flags = torch.zeros(3 * world, dtype=torch.int32, device=args.device)
        if self.signal_name:
            flags[rank] = int(signal.Signals[self.signal_name])
        for slot, value in (
            (world + rank, self.nonfinite_local),
            (2 * world + rank, self._grads_nonfinite(args.device)),
        ):
            if torch.is_tensor(value):
                flags[slot] = value.to(device=flags.device, dtype=torch.int32)
            elif value:
                flags[slot] = 1
        if world > 1:
            flags = reduce(flags, reduction="sum")
        flags = flags.tolist()  # the step's one host read
        signalled = {r: signal.Signals(flags[r]).name for r in range(world) if flags[r]}
        return (
            signalled,
            [r for r in range(world) if flags[world + r]],
            [r for r in range(world) if flags[2 * world + r]],
        )

    # --- callback events -------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        if self.skip_nonfinite and self.trainer.is_deepspeed_enabled and not args.fp16:
            raise UserError(
                "--skip_nonfinite_steps: under DeepSpeed the update happens inside the engine, before any "
                "callback can skip it; only DeepSpeed's fp16 loss scaler skips overflowing steps.\n"
                "  fix: drop --skip_nonfinite_steps (a non-finite step then stops the run with its cause), "
                "or use DDP/FSDP."
            )
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous_handlers[sig] = signal.signal(sig, self._on_signal)

    def on_step_begin(self, args, state, control, **kwargs):
        self.nonfinite_local, self.grad_norm = False, None
        inject_test_fault("step_begin", state.global_step + 1)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        step = state.global_step + 1
        signalled, bad_loss, bad_grads = self._agree(args)
        self._signalled = signalled
        if not (bad_loss or bad_grads):
            self._consecutive_skips = 0
            return
        ranks = bad_loss or bad_grads
        where = (
            f"non-finite {'loss' if bad_loss else 'gradients'} at step {step} on "
            f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"
        )
        if self.skip_nonfinite and not self.trainer.is_deepspeed_enabled:
            self._consecutive_skips += 1
            self.skipped_steps.append(step)
            if self._consecutive_skips <= MAX_CONSECUTIVE_SKIPS:
                for param in self.trainer.model.parameters():
                    param.grad = None  # the optimizer skips parameters without a gradient
                if state.is_world_process_zero:
                    print(
                        f"disttune: {where}: update skipped (--skip_nonfinite_steps).",
                        file=sys.stderr,
                        flush=True,
                    )
                return
            where += f" ({MAX_CONSECUTIVE_SKIPS} steps in a row skipped before it)"
        raise NonFiniteError(
            f"{where}; stopped before the update, weights untouched.\n"
            f"  likely cause: {likely_cause(args)}.\n"
            "  fix: resume from the last checkpoint (--resume_from_checkpoint latest) with the cause fixed, "
            "or pass --skip_nonfinite_steps to skip such steps."
        )

    def on_step_end(self, args, state, control, **kwargs):
        signalled = getattr(self, "_signalled", {})
        if signalled and self.stopped_by is None:
            self.stopped_by = ", ".join(f"{name} on rank {rank}" for rank, name in signalled.items())
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers = {}
        if self.stopped_by is not None:
            checkpoint = str(RunFolder(args.output_dir).checkpoint(state.global_step))
            raise TrainingStopped(
                f"stopped by {self.stopped_by} after step {state.global_step}; checkpoint saved in {checkpoint}.\n"
                "  to resume: run the same command with --resume_from_checkpoint latest",
                checkpoint,
            )


def translate_deepspeed_error(exc: BaseException, step: int, args) -> UserError | None:
    """DeepSpeed's fp16 loss-scale collapse, reported like any other non-finite step (None otherwise)."""
    if "loss scale already at minimum" not in str(exc):
        return None
    return NonFiniteError(
        f"DeepSpeed's fp16 loss scale collapsed at step {step} on rank {rank_from_env()}: every step overflowed.\n"
        f"  likely cause: {likely_cause(args)}.\n"
        "  fix: train in bf16 (--mixed_precision bf16) or lower the learning rate, then resume from the last "
        "checkpoint (--resume_from_checkpoint latest)."
    )


COLLECTIVE_FAILURES = (
    "Timed out waiting",
    "Connection closed by peer",
    "Connection reset by peer",
    "Watchdog caught collective operation timeout",
    "NCCL communicator was aborted",
)


def collective_failure_message(exc: BaseException, step: int, timeout_s: float) -> str | None:
    """What to tell the user when a collective failed because a peer hung or died (None otherwise)."""
    text = str(exc)
    if not any(pattern in text for pattern in COLLECTIVE_FAILURES):
        return None
    why = (
        "timed out after --ddp_timeout"
        if "imed out" in text or "timeout" in text
        else "lost its peer; --ddp_timeout"
    )
    return (
        f"disttune: rank {rank_from_env()}: a collective in step {step} {why} {timeout_s:g} s: another rank stopped "
        f"answering (hung, stopped or dead). Leaving with exit code 1 so that the launcher stops every rank.\n"
        "  fix: look for the rank that failed first in the launcher's report; pass --hang_dump_s N to get every "
        f"rank's Python stack in --output_dir and the silent rank's number.\n  ({text.splitlines()[0][:200]})"
    )


class HangWatchdog(TrainerCallback):
    """Dump stacks and leave when no step completes for ``timeout_s`` seconds.

    The stacks come from ``faulthandler.dump_traceback``. Its timer (``dump_traceback_later(exit=True)``)
    is not used: it runs no Python code when it fires, so it could neither name the ranks that stopped
    answering (read from the heartbeats below) nor say so on stderr before leaving.
    """

    HEARTBEAT_S = 1.0

    def __init__(self, timeout_s: float, output_dir: str):
        self.timeout_s = timeout_s
        self.output_dir = output_dir
        self.last_progress = time.monotonic()
        self.step = 0
        self._stop = threading.Event()
        self._store = None

    def _connect_store(self):
        return launcher_store()

    def _heartbeat(self) -> None:
        """Every second: ``time step`` under ``disttune/alive/{rank}``; a stopped or dead rank goes stale."""
        store = self._store
        while store is not None and not self._stop.wait(self.HEARTBEAT_S):
            try:
                store.set(f"disttune/alive/{rank_from_env()}", f"{time.time():.3f} {self.step}")
            except Exception:
                return

    def _silent_ranks(self) -> dict[int, str]:
        """``{rank: why}`` for the ranks that stopped answering, from their heartbeats (best effort)."""
        world = world_size_from_env()
        if self._store is None or world < 2:
            return {}
        silent = {}
        for rank in range(world):
            try:
                stamp, step = self._store.get(f"disttune/alive/{rank}").decode().split()
            except Exception:
                silent[rank] = f"rank {rank} (no heartbeat)"
                continue
            age = time.time() - float(stamp)
            if age > 5 * self.HEARTBEAT_S:
                silent[rank] = f"rank {rank} (silent for {age:.0f} s, last completed step {step})"
        return silent

    def _dump(self, rank: int, idle: float):
        path = RunFolder(self.output_dir).hang_dump(rank)
        try:
            with path.open("w") as fh:
                fh.write(
                    f"rank {rank}: no step completed for {idle:.0f} s; last completed step {self.step}\n"
                )
                fh.flush()
                faulthandler.dump_traceback(fh, all_threads=True)
        except OSError:
            faulthandler.dump_traceback(sys.stderr, all_threads=True)
        return path

    def _leave(self, idle: float) -> None:
        """Dump this rank's stacks, record the failure, say which rank failed first, and leave."""
        rank, step = rank_from_env(), self.step + 1
        path = self._dump(rank, idle)
        silent = {r: why for r, why in self._silent_ranks().items() if r != rank}
        answering = (
            "; not answering: " + ", ".join(silent.values())
            if silent
            else "; every rank's process still answers"
        )
        hung = f"no training step completed for {idle:.0f} s (--hang_dump_s {self.timeout_s:g})"
        failure = Failure(rank, step, at_step(step), hung, secondary=bool(silent), silent=tuple(silent))
        record(failure, self.output_dir, self._store)
        first = failure
        if silent:  # the rank this one waited for failed first (failure.first_of derives the same)
            first = Failure(min(silent), step, at_step(step), STOPPED_ANSWERING.format(watcher=rank))
        print(
            f"disttune: rank {rank}: {hung}; stuck in step {step}{answering}. Python stacks in {path}. "
            f"Leaving with exit code 1 so that the launcher stops every rank.\ndisttune: {first.line()}",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            idle = time.monotonic() - self.last_progress
            if idle >= self.timeout_s:
                self._leave(idle)

    def on_train_begin(self, args, state, control, **kwargs):
        self.step = state.global_step
        self.last_progress = time.monotonic()
        self._store = self._connect_store()
        threading.Thread(target=self._watch, name="disttune-watchdog", daemon=True).start()
        threading.Thread(target=self._heartbeat, name="disttune-heartbeat", daemon=True).start()

    def on_step_end(self, args, state, control, **kwargs):
        self.step = state.global_step
        self.last_progress = time.monotonic()

    def on_save(self, args, state, control, **kwargs):
        self.last_progress = time.monotonic()

    def on_train_end(self, args, state, control, **kwargs):
        self._stop.set()
