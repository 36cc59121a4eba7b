"""``DisttuneTrainer``: TRL's ``SFTTrainer`` with disttune's fault handling and crash-safe checkpoints.

What it adds to ``SFTTrainer``, all of it here (the callbacks' own behaviour is in ``faults.py``):

- ``compute_loss``: notes whether this rank's training loss is finite (``StepGuard`` then has every rank
  agree once per optimizer step: stop, or skip with ``--skip_nonfinite_steps``);
- ``training_step``: DeepSpeed's fp16 loss-scale collapse becomes a ``NonFiniteError``; a collective that
  timed out or lost its peer becomes one line naming this rank and the step, then exit code 1;
- ``_save_checkpoint``: every checkpoint is marked complete once all ranks have written it, and old ones
  are rotated only after that (``checkpoints.py``);
- ``get_eval_dataloader``: evaluation drops no example (``dataloader_drop_last`` is for training);
- its own callback ``StepGuard`` (signals, non-finite steps; ``guards.py``), added last; the other
  callbacks are assembled in ``build.build_trainer``;
- resume across layouts: with ``portable`` set (a checkpoint of another strategy or world size, converted
  by ``portable.py``), transformers' own loading is skipped and the portable copy is loaded into the
  prepared model and optimizer instead; the global step (hence the data position) still comes from the
  checkpoint's ``trainer_state.json``, and its per-rank random states are not restored (they belong to
  another world size).

``DISTTUNE_TEST_FAULT`` (tests only, see ``guards.py``) injects a NaN loss here and a kill mid-save.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from trl import SFTTrainer

from disttune.run_folder import RunFolder
from disttune.train.checkpoints import is_complete, rotate, write_marker
from disttune.train.guards import (
    StepGuard,
    collective_failure_message,
    inject_test_fault,
    test_faults,
    translate_deepspeed_error,
)
from disttune.train.portable import load_portable


class DisttuneTrainer(SFTTrainer):
    """``SFTTrainer`` that stops (or skips) non-finite steps, saves and stops on SIGTERM/SIGINT, and writes
    checkpoints that a resume can trust.

    ``run_info`` (world size, strategy, run id) goes into every checkpoint's completion mark, so that a
    resume can check that it is compatible. The other arguments are ``SFTTrainer``'s.
    """

    def __init__(self, *args, run_info: dict, skip_nonfinite_steps: bool = False, **kwargs):
        self.run_info = run_info
        self.portable: Path | None = None  # set when resuming a checkpoint of another layout (portable.py)
        self.guard = StepGuard(self, skip_nonfinite=skip_nonfinite_steps)
        super().__init__(*args, **kwargs)
        # Last, after transformers' progress callback: the guard's on_train_end may raise TrainingStopped.
        self.add_callback(self.guard)

    def compute_loss(self, model, inputs, *args, **kwargs):
        result = super().compute_loss(model, inputs, *args, **kwargs)
        loss = result[0] if isinstance(result, tuple) else result
        if test_faults().get(("nan", self.state.global_step + 1)):
            loss = loss * float("nan")
            result = (loss, *result[1:]) if isinstance(result, tuple) else loss
        if model.training:
            self.guard.note_loss(loss)  # on the device: read once per optimizer step (StepGuard)
        return result

    def _get_grad_norm(self, model, grad_norm=None):
        """transformers' gradient norm of this step (computed before every optimizer step), kept for the
        guard's non-finite check instead of a scan of every gradient."""
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self.guard.note_grad_norm(grad_norm)
        return grad_norm

    def training_step(self, *args, **kwargs):
        try:
            return super().training_step(*args, **kwargs)
        except Exception as exc:
            step = self.state.global_step + 1
            translated = translate_deepspeed_error(exc, step, self.args)
            if translated is not None:
                raise translated from exc
            message = collective_failure_message(exc, step, self.args.ddp_timeout)
            if message is None:
                raise
            print(message, file=sys.stderr, flush=True)
            raise SystemExit(1) from exc

    def get_eval_dataloader(self, eval_dataset=None):
        """Every evaluation example counts: ``dataloader_drop_last`` (on by default here, for full training
        batches) is for training only; transformers applies it to evaluation too, where 10 examples over 2
        ranks x 8 per device left no batch at all and no ``eval_loss``."""
        drop, self.args.dataloader_drop_last = self.args.dataloader_drop_last, False
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.args.dataloader_drop_last = drop

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if self.portable is None:
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        if self.portable is None:
            return super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)
        model, train_dataloader = super()._prepare_for_training(max_steps, train_dataloader, None)
        load_portable(self, self.portable)
        return model, train_dataloader

    def _load_rng_state(self, checkpoint):
        if self.portable is None:
            super()._load_rng_state(checkpoint)

    def _save_checkpoint(self, model, trial):
        """Save with rotation off; once every rank has written its part, mark it complete, then rotate.

        Transformers 5.23 rotates (``--save_total_limit``) before every rank has finished writing the new
        checkpoint, and never marks one complete; see ``checkpoints.py``.
        """
        args, step = self.args, self.state.global_step
        folder = RunFolder(args.output_dir).checkpoint(step)
        if args.should_save and folder.is_dir() and not is_complete(folder):
            shutil.rmtree(folder)  # a half-written leftover of a crashed run: never mix files into it
        self.accelerator.wait_for_everyone()
        limit, args.save_total_limit = args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            args.save_total_limit = limit
        inject_test_fault("after_write", step)
        self.accelerator.wait_for_everyone()  # every rank has written its part
        if args.should_save:
            write_marker(folder, {**self.run_info, "step": step})
            rotate(args.output_dir, limit)
        self.accelerator.wait_for_everyone()
