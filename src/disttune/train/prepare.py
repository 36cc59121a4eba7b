"""Preparing the run folder before anything is loaded: output folder, disk space, resume target, no silent
overwrite.

Each check raises ``UserError`` (what, where, how to fix) and leaves every file as it was.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from disttune.errors import UserError
from disttune.run_folder import RunFolder
from disttune.train.distributed import current_layout, rank_from_env, restart_count
from disttune.train.failure import Where

GIB = 1024**3


def check_output_dir(output_dir: str | os.PathLike, resuming: bool, overwrite: bool) -> None:
    """The folder can be written, and holds no other run's results unless resuming or overwriting."""
    root = Path(output_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".disttune-write-test-{uuid.uuid4().hex}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"--output_dir {root}: cannot write there ({exc.strerror or exc}).\n"
            "  fix: choose a folder you can write to, or fix its permissions."
        ) from exc
    if resuming or overwrite:
        return
    existing = [path.name for path in RunFolder(root).results if path.exists()]
    if existing:
        raise UserError(
            f"--output_dir {root} already holds a run ({', '.join(existing)}); refusing to overwrite it.\n"
            "  fix: choose a new --output_dir, continue it with --resume_from_checkpoint latest, or pass "
            "--overwrite_output_dir to replace it."
        )


def layout_change(marker: dict, layout: dict) -> str | None:
    """``"deepspeed-zero2 x2 -> ddp x1"`` when the checkpoint was written under another strategy or world
    size than this run's (``portable.py`` then converts it), None when it resumes natively."""
    saved_strategy, saved_world = marker.get("strategy"), marker.get("world_size")
    if (saved_strategy in (None, layout["strategy"])) and (saved_world in (None, layout["world_size"])):
        return None
    return (
        f"{saved_strategy or layout['strategy']} x{saved_world or layout['world_size']} -> "
        f"{layout['strategy']} x{layout['world_size']}"
    )


def keep_global_batch(training_args, marker: dict, explicit: set[str], world_size: int) -> str | None:
    """Keep the checkpoint's global batch when the world size changed, so that its step count is still the
    data position: adjust accumulation (``plan.solve``) unless the user set it. Returns a note, or None."""
    from disttune.plan import global_batch_size, solve
    from disttune.train.reconcile import set_accumulation

    saved = marker.get("global_batch_size")
    per_device, accumulation = (
        training_args.per_device_train_batch_size,
        training_args.gradient_accumulation_steps,
    )
    ours = global_batch_size(per_device, world_size, accumulation)
    if saved is None:
        return (
            f"the checkpoint does not record its global batch (written by an older disttune): this run's is "
            f"{ours} = {per_device} x {world_size} x {accumulation}; if that is not the checkpoint's, the step "
            "count is no longer the data position (set --gradient_accumulation_steps to keep it)"
        )
    if saved == ours:
        return None
    where = f"the checkpoint was trained with global batch {saved} on {marker.get('world_size')} process(es)"
    if "gradient_accumulation_steps" in explicit:
        raise UserError(
            f"--gradient_accumulation_steps {accumulation}: {where}; this run's would be {ours} = "
            f"{per_device} x {world_size} x {accumulation}, and the step count would no longer be the data "
            "position.\n  fix: leave --gradient_accumulation_steps out (disttune then keeps the global "
            f"batch {saved}), or start a new run from the checkpoint's weights."
        )
    try:
        kept = solve(world_size, per_device=per_device, global_batch=saved)
    except UserError as exc:
        raise UserError(f"cannot keep the global batch on resume: {where}. {exc}") from None
    set_accumulation(training_args, kept.gradient_accumulation_steps)
    return (
        f"gradient_accumulation_steps {accumulation} -> {kept.gradient_accumulation_steps}: keeps the "
        f"checkpoint's global batch {saved} = {per_device} x {world_size} x {kept.gradient_accumulation_steps}"
    )


@dataclass(frozen=True)
class CheckpointSize:
    """Bytes one checkpoint takes, and the disk the run needs for the checkpoints it keeps."""

    per_checkpoint: int
    kept: int
    total: int


def estimate_checkpoint_size(
    num_params: int, trainable_params: int, weight_bytes: int, strategy: str, kept: int
) -> CheckpointSize:
    """Disk for the checkpoints a run keeps (Adam-style optimizer, two fp32 moments).

    per checkpoint = P x weight_bytes (model weights, safetensors)
                   + T x 8 (Adam exp_avg and exp_avg_sq in fp32)
                   + T x 4 under DeepSpeed (its fp32 master partitions are saved too)
    total = per checkpoint x (kept + 1: the next one is written before the oldest is deleted)
          + P x weight_bytes (the final model)
    (P: all parameters, T: trainable ones.) Measured on the tiny preset: DDP 3.07 MB weights + 6.16 MB
    optimizer for P = T = 767k in fp32, i.e. 12 bytes per parameter.
    """
    per = num_params * weight_bytes + trainable_params * 8
    if strategy.startswith("deepspeed"):
        per += trainable_params * 4
    total = per * (kept + 1) + num_params * weight_bytes if kept else num_params * weight_bytes
    return CheckpointSize(per_checkpoint=per, kept=kept, total=total)


def checkpoints_kept(
    save_strategy: str, save_steps: float, save_total_limit: int | None, max_steps: int
) -> int:
    """How many checkpoints the run will hold at the end (before the ``+1`` of a save in progress)."""
    if str(save_strategy).split(".")[-1].lower() == "no":
        return 0
    saves = int(max_steps // save_steps) if max_steps > 0 and save_steps >= 1 else None
    if save_total_limit:
        return min(save_total_limit, saves) if saves is not None else save_total_limit
    return saves if saves is not None else 10  # an epoch-based run without a limit: assume ten


def check_disk_space(
    output_dir: str | os.PathLike, size: CheckpointSize, free_bytes: int | None = None
) -> None:
    """Refuse to start when the checkpoints the run keeps would not fit on the output disk."""
    free = shutil.disk_usage(output_dir).free if free_bytes is None else free_bytes
    if size.total <= free:
        return
    raise UserError(
        f"--output_dir {output_dir}: {free / GIB:.2f} GiB free, the run needs about {size.total / GIB:.2f} GiB "
        f"({size.kept} checkpoint(s) of {size.per_checkpoint / GIB:.2f} GiB + one being written + the final "
        "model).\n  fix: free some space, write to a larger disk, or keep fewer checkpoints (--save_total_limit)."
    )


def check_trainer_disk(trainer, training_args) -> None:
    """``check_disk_space`` with the numbers of the loaded model; every rank may call it."""
    from disttune.train.measure import full_param_count

    model = trainer.model
    num, trainable = full_param_count(model), full_param_count(model, trainable_only=True)
    weight_bytes = max((p.element_size() for p in model.parameters()), default=4)
    kept = checkpoints_kept(
        training_args.save_strategy,
        training_args.save_steps,
        training_args.save_total_limit,
        training_args.max_steps,
    )
    size = estimate_checkpoint_size(num, trainable, weight_bytes, current_layout()["strategy"], kept)
    check_disk_space(training_args.output_dir, size)


def prepare_run(script_args, training_args, explicit: set[str] = frozenset()) -> list[str]:
    """Before anything is loaded: resolve ``--resume_from_checkpoint`` (after a restart by torchrun's
    elastic agent: the newest complete checkpoint), keep the checkpoint's global batch when the layout
    changed, check the output folder, keep ``--hub_token`` out of every file the run writes. Returns notes
    for the log; ``script_args.layout_change`` says whether the checkpoint must be converted."""
    from disttune.train.checkpoints import read_marker, resolve_resume

    notes = []
    requested = training_args.resume_from_checkpoint
    restarted = restart_count() > 0
    if restarted:
        requested = "latest"  # the same job, restarted: go on from what it saved, whatever was asked
    path, note = resolve_resume(requested, training_args.output_dir)
    training_args.resume_from_checkpoint = path
    if note:
        notes.append(note)
    layout = current_layout()
    marker = (read_marker(path) or {}) if path is not None else {}
    script_args.layout_change = layout_change(marker, layout) if path is not None else None
    if script_args.layout_change:
        notes.append(f"resuming across layouts: {script_args.layout_change}")
        kept = keep_global_batch(training_args, marker, explicit, layout["world_size"])
        if kept:
            notes.append(kept)
    check_output_dir(
        training_args.output_dir,
        resuming=path is not None or restarted,
        overwrite=script_args.overwrite_output_dir,
    )
    if training_args.hub_token:
        # TrainingArguments is pickled into every checkpoint (training_args.bin): keep the token in the
        # environment, where huggingface_hub finds it for --push_to_hub, and out of the files.
        os.environ.setdefault("HF_TOKEN", training_args.hub_token)
        training_args.hub_token = None
    Where.output_dir = training_args.output_dir  # the checks passed: a failure from here on is recorded there
    if rank_from_env() == 0:
        notes[:0] = clear_previous_records(
            training_args, replace=script_args.overwrite_output_dir and not path
        )
    return notes


def clear_previous_records(training_args, replace: bool) -> list[str]:
    """The main process, before anything is loaded: a new job keeps no restart records of an old one, a
    restarted one notes why the previous attempt ended (``restarts.py``), and ``--overwrite_output_dir``
    starts the record files afresh (else metrics.jsonl would hold both runs). Returns notes for the log."""
    from disttune.train import restarts

    output_dir = training_args.output_dir
    restarts.clear(output_dir)
    if replace and restart_count() == 0:
        for path in RunFolder(output_dir).records:
            path.unlink(missing_ok=True)
    restarted = restarts.note_restart(output_dir, training_args.resume_from_checkpoint)
    return [restarted] if restarted else []
