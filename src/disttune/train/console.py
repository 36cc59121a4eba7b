"""What the console shows: one log for the job, and a step line the eye can follow.

By default (``--verbose`` or ``DISTTUNE_DEBUG=1`` restores everything):

- only the main process (``RANK`` 0) draws progress bars; the other processes show the libraries'
  errors but not their warnings (transformers, datasets, DeepSpeed, Python's ``warnings``): those repeat
  the main process's, which still shows them, once per job;
- the warnings in ``QUIET_WARNINGS`` are not shown at all: each says nothing a user can act on (the
  reason is written beside it). A warning that asks for an action is never in that list;
- transformers' dict lines (``{'loss': ..., 'grad_norm': ...}``) become one line per logging step from the
  main process (``StepLog``); the dicts themselves go to ``<output_dir>/trainer_log.jsonl``.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

from transformers import ProgressCallback

from disttune.run_folder import RunFolder, append_jsonl
from disttune.train.distributed import rank_from_env

DEBUG_ENV = "DISTTUNE_DEBUG"

# (start of the message, category, why nobody can act on it). Hidden on every process unless verbose.
QUIET_WARNINGS = (
    (
        "`gradient_checkpointing` is deprecated",
        FutureWarning,
        "TRL's config still carries transformers' old name for the flag users type; nothing to change",
    ),
    (
        "'pin_memory' argument is set as true but no accelerator is found",
        UserWarning,
        "transformers pins batches by default; without a GPU torch skips pinning, which changes nothing",
    ),
    (
        "`is_gradient_checkpointing` is deprecated",
        FutureWarning,
        "TRL 1.16's unwrap_model_for_generation (the held-out answers) reads transformers' old property name",
    ),
    (
        "`torch.distributed.all_gather_into_tensor` is deprecated",
        FutureWarning,
        "DeepSpeed 0.19.8 calls torch 2.13's old name; nothing a user can change (repeated every step)",
    ),
    (
        "`torch.distributed.reduce_scatter_tensor` is deprecated",
        FutureWarning,
        "the same, for ZeRO's gradient reduce-scatter (dozens of times per step under ZeRO-3)",
    ),
)
_saved_filters: list = []  # Python's warning filters before ``quiet_console``
# Library loggers whose warnings the non-main processes leave to the main one.
LIBRARY_LOGGERS = ("DeepSpeed",)


def _is_main() -> bool:
    return rank_from_env() == 0


def verbose_requested(argv: list[str], environ=os.environ) -> bool:
    """``DISTTUNE_DEBUG`` set (not 0), or ``--verbose`` on the command line (``--verbose [true|false]``)."""
    if environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
        return True
    value = None
    for i, arg in enumerate(argv):
        if arg == "--verbose":
            following = argv[i + 1] if i + 1 < len(argv) else ""
            value = following if following.lower() in ("true", "false", "yes", "no", "1", "0") else "true"
        elif arg.startswith("--verbose="):
            value = arg.split("=", 1)[1]
    return value is not None and value.lower() in ("true", "yes", "1")


def _only_errors(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def quiet_console(verbose: bool) -> None:
    """Apply the rules of the module docstring to this process (call it first thing in ``main``)."""
    if verbose:
        return
    _saved_filters[:] = warnings.filters
    for message, category, _why in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=category)
    if _is_main():
        return
    import datasets
    import huggingface_hub.utils
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    huggingface_hub.utils.disable_progress_bars()
    warnings.simplefilter("ignore")  # the main process shows the same warnings
    for name in LIBRARY_LOGGERS:  # DeepSpeed sets its logger's level itself when imported: filter instead
        logging.getLogger(name).addFilter(_only_errors)


def show_everything() -> None:
    """Undo ``quiet_console`` (``--verbose`` given in a ``--config`` recipe, read after it ran)."""
    import datasets
    import huggingface_hub.utils
    import transformers

    transformers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.enable_progress_bar()
    datasets.logging.set_verbosity_warning()
    datasets.enable_progress_bars()
    huggingface_hub.utils.enable_progress_bars()
    if _saved_filters:
        warnings.resetwarnings()
        for action, message, category, module, lineno in reversed(_saved_filters):
            warnings.filterwarnings(
                action, message.pattern if message else "", category, module.pattern if module else "", lineno
            )
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).removeFilter(_only_errors)


def step_line(step: int, max_steps: int, record: dict) -> str:
    """``step 5/80  loss 3.912  lr 2.9e-03  1234 tok/s  mem 1.2 GiB`` from a ``metrics.jsonl`` record.

    tok/s is the whole job's; mem is the highest peak over the processes (GPU allocator peak, or the
    process's peak RSS on CPU). A figure that is not known is left out.
    """
    parts = [f"step {step}/{max_steps}" if max_steps > 0 else f"step {step}"]
    if record.get("loss") is not None:
        parts.append(f"loss {record['loss']:.3f}")
    else:
        parts.append("loss nan")
    if record.get("learning_rate") is not None:
        parts.append(f"lr {record['learning_rate']:.1e}")
    if record.get("tokens_per_second") is not None:
        parts.append(f"{record['tokens_per_second']:.0f} tok/s")
    memory = [m for m in record.get("peak_memory_bytes") or [] if m is not None]
    if memory:
        parts.append(f"mem {max(memory) / 2**30:.1f} GiB")
    return "  ".join(parts)


def _other_line(step: int, logs: dict) -> str | None:
    """An evaluation log as one line (``step 80  eval_loss 2.101  ...``); None for train's final summary."""
    if "train_runtime" in logs:
        return None  # the run's own "done" line follows; the figures are in trainer_log.jsonl
    figures = [
        f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
        for key, value in logs.items()
        if key != "epoch"
    ]
    return "  ".join([f"step {step}", *figures]) if figures else None


class StepLog(ProgressCallback):
    """transformers' progress bar, printing one step line per log instead of the log's dict.

    Reads the figures of the ``MetricsCallback`` given (it runs first: user callbacks come before the
    progress callback). Every log dict is appended to ``<output_dir>/trainer_log.jsonl``; with
    ``show_dicts`` (verbose) the dicts are printed too, as transformers does.
    """

    def __init__(self, metrics, show_dicts: bool = False):
        super().__init__()
        self.metrics = metrics
        self.show_dicts = show_dicts

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        append_jsonl(
            RunFolder(args.output_dir).trainer_log,
            {"step": state.global_step, **logs, "run_id": self.metrics.run_id},
        )
        if self.show_dicts:
            super().on_log(args, state, control, logs=logs, **kwargs)
        record = getattr(self.metrics, "last_record", None)
        if "loss" in logs and record is not None and record.get("step") == state.global_step:
            line = step_line(state.global_step, state.max_steps, record)
        else:
            line = _other_line(state.global_step, logs)
        if line is None:
            return
        if self.training_bar is not None:
            self.training_bar.write(line)
        else:
            print(line, flush=True)


def attach(trainer, metrics, verbose: bool) -> None:
    """Put ``StepLog`` in place of transformers' progress callback (``--disable_tqdm``: its printer)."""
    from transformers import PrinterCallback

    if verbose or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
        show_everything()
        verbose = True
    elif not _is_main():
        import transformers

        transformers.utils.logging.set_verbosity_error()  # the Trainer set its replica level again
    if any(isinstance(callback, PrinterCallback) for callback in trainer.callback_handler.callbacks):
        return  # --disable_tqdm: transformers' plain printer stays
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(StepLog(metrics, show_dicts=verbose))
