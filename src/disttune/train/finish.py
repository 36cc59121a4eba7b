"""After the last step: the final model, proven to load back, and ``run_summary.json``.

Every rank calls ``save_outputs`` (the weights are gathered from all of them); the checks run on the main
process (``save.py``). A run that extends a finished one writes ``final.partial/`` and replaces ``final/``
only once the new model is written and checked.
"""

from __future__ import annotations

import shutil

from disttune.run_folder import write_json
from disttune.train.build import Run, base_model_path
from disttune.train.evaluate import describe_change
from disttune.train.failure import read_restarts
from disttune.train.measure import measure_run
from disttune.train.save import check_adapter, check_final_model, save_final, save_merged_lora
from disttune.train.settings import Settings


def save_outputs(run: Run, settings: Settings) -> None:
    """Write ``final/`` and prove it loads back as the trained weights; with --merge_lora also ``final_merged/``.
    With --push_to_hub the output folder is then pushed, as ``Trainer.save_model`` does."""
    trainer, folder = run.trainer, settings.folder
    training_args, model_args = settings.training_args, settings.model_args
    written = folder.final_partial if folder.final.exists() else folder.final
    trained = save_final(trainer, written)
    if trainer.accelerator.is_main_process and not model_args.use_peft:
        check_final_model(written, trained, training_args.trust_remote_code)
    elif trainer.accelerator.is_main_process:
        check_adapter(written, trained)
        if settings.script_args.merge_lora:
            base = base_model_path(model_args, training_args.seed)
            merged = save_merged_lora(base, written, folder.final_merged, training_args.trust_remote_code)
            print(f"disttune: merged LoRA model saved in {merged}", flush=True)
    del trained
    if written != folder.final and trainer.accelerator.is_main_process:
        shutil.rmtree(folder.final)
        written.rename(folder.final)
    if training_args.push_to_hub:  # what trainer.save_model did here; every rank takes part in its gather
        trainer.push_to_hub(commit_message="Model save")


def summarize(run: Run, settings: Settings, info: dict, result) -> dict:
    """The run's figures for ``run_summary.json`` (every rank calls it: the measurements gather)."""
    training_args, plan, metrics = settings.training_args, settings.plan, run.metrics
    return {
        **info,
        "per_device_train_batch_size": plan.per_device_train_batch_size,
        "gradient_accumulation_steps": plan.gradient_accumulation_steps,
        "global_batch_size": plan.global_batch_size,
        "learning_rate": training_args.learning_rate,
        "max_grad_norm": training_args.max_grad_norm,
        "max_length": training_args.max_length,
        **measure_run(run.trainer),
        "global_step": run.trainer.state.global_step,
        "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 3),
        "tokens_per_second": metrics.tokens_per_second,
        "final_loss": metrics.losses[-1] if metrics.losses else None,
        "data_format": run.data_format,
        "final_dir": str(settings.folder.final),
        "resumed_from": training_args.resume_from_checkpoint,
        "layout_change": settings.script_args.layout_change,
        "restarts": read_restarts(training_args.output_dir),
        "notes": settings.notes,
        "eval": run.evaluation.summary(),
    }


def report(summary: dict, settings: Settings) -> None:
    """Write ``run_summary.json``; say whether the model learned and where it is (main process)."""
    write_json(settings.folder.summary, summary)
    learned = describe_change(summary["eval"])
    if learned:
        print(f"disttune: {learned}", flush=True)
    print(
        f"disttune: done: final loss {summary['final_loss']}, model saved in {settings.folder.final}",
        flush=True,
    )
