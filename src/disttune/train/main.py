"""Supervised fine-tuning under any accelerate strategy, top to bottom: ``main() -> run() -> fit()``.

``run`` resolves every setting (``settings.resolve``), clears the previous job's records from the run folder
(``restarts``), builds the trainer (``build.build_trainer``) and calls ``fit``: the plan is printed, TRL's
``SFTTrainer`` trains, the run is measured, the final model saved and checked, ``run_summary.json`` written
(``finish.py``). The script never branches on the strategy: the accelerate config picks DDP, ZeRO or FSDP.
``main`` turns every way a run can end into one exit code and one failure record (``failure.py``).
"""

from __future__ import annotations

import sys

from disttune.errors import UserError
from disttune.extensions import notify_op_builds, use_environment_extensions_dir
from disttune.train import console, failure
from disttune.train.build import Run, build_trainer
from disttune.train.distributed import describe, rank_from_env
from disttune.train.finish import report, save_outputs, summarize
from disttune.train.guards import TrainingStopped
from disttune.train.settings import Settings, format_plan, resolve
from disttune.train.teardown import release_trainer, shutdown_distributed


def fit(run: Run, settings: Settings) -> dict:
    """Print the plan, train, measure, save and check the final model, write ``run_summary.json``."""
    trainer, training_args = run.trainer, settings.training_args
    info = describe(trainer.accelerator)
    if trainer.accelerator.is_main_process:
        for note in settings.notes:
            print(f"disttune: {note}", flush=True)
        print(
            f"disttune: data format '{run.data_format}' from {settings.script_args.dataset_name}", flush=True
        )
        print(format_plan(info, settings), flush=True)

    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    summary = summarize(run, settings, info, result)  # measured before the save allocates anything
    save_outputs(run, settings)
    if trainer.accelerator.is_main_process:
        report(summary, settings)
    return summary


def run(argv: list[str]) -> dict:
    """Set up, train and save; returns the run summary. The trainer is freed when this returns."""
    settings = resolve(argv)
    built = build_trainer(settings)
    try:
        return fit(built, settings)
    finally:
        release_trainer(built.trainer)


def main(argv: list[str] | None = None) -> int:
    """Run the training script; returns the exit code. Every failure is recorded where it happens and ends
    the output with its cause (``failure.py``); a user mistake is one message, no traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    console.quiet_console(console.verbose_requested(argv))  # one log for the job (see console.py)
    use_environment_extensions_dir()  # DeepSpeed's op builds of this environment, not another's
    stopped = None
    try:
        # From the start: DeepSpeed builds its ops (and may wait on a stale build lock) while the arguments
        # are parsed; every 30 s the first process of each machine says which op and for how long.
        with notify_op_builds():
            run(argv)
    except TrainingStopped as exc:  # SIGTERM/SIGINT: checkpoint saved; say how to go on
        stopped = str(exc)  # not the exception: its traceback would keep the trainer alive
    except UserError as exc:
        failure.report_user_error(exc)  # once per job, however many ranks hit it
        return exc.exit_code
    except Exception as exc:  # the cause and the likely fix as the last lines
        failure.report_crash(exc)
        return 1
    except SystemExit as exc:  # a collective lost its peer (trainer.py): repeat the peer's cause
        if exc.code:
            failure.report_lost_peer()
        raise
    shutdown_distributed()  # here, once the trainer (and any traceback holding it) is gone
    if stopped is not None and rank_from_env() == 0:
        print(f"disttune: {stopped}", flush=True)
    return 0
