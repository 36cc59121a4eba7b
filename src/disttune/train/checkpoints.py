"""Crash-safe checkpoints: write, then mark complete atomically; resume only from complete ones.

Transformers 5.23 writes ``checkpoint-N/`` in place (no temporary folder, no completion mark) and
rotates old checkpoints (``--save_total_limit``) *before* every rank has finished writing the new one;
its ``get_last_checkpoint`` takes the highest-numbered folder, complete or not. A crash during a save
could therefore leave a half-written newest checkpoint and no complete one at all. Here:

1. the trainer's ``_save_checkpoint`` runs with rotation switched off (``DisttuneTrainer._save_checkpoint``
   in ``trainer.py`` does steps 1-3 with the functions here);
2. a barrier waits until every rank has written its part; rank 0 flushes the files to disk and writes
   ``disttune_complete.json`` (temporary file + ``os.replace``: the mark appears whole or not at all);
3. only then are old checkpoints rotated, counting complete ones only, never the newest complete one.

``--resume_from_checkpoint latest`` (or ``true``) resolves to the newest checkpoint with a mark.

What a resume reads, and how (transformers 5.23, DeepSpeed 0.19.8):
- model weights: ``model.safetensors`` via safetensors (no pickle);
- HF's ``optimizer.pt``, ``scheduler.pt``, ``scaler.pt``, ``rng_state_{rank}.pth``: ``torch.load(...,
  weights_only=True)`` (``Trainer._load_optimizer_and_scheduler`` / ``_load_rng_state``);
- DeepSpeed's ``global_step*/`` files (``*_optim_states.pt``, ``*_model_states.pt``): ``torch.load(...,
  weights_only=False)`` in ``deepspeed/runtime/checkpoint_engine/torch_checkpoint_engine.py``, i.e. a
  pickle that can run code: resume under ZeRO only from checkpoints you wrote yourself. Not changed here;
- ``training_args.bin`` is a pickle too, but it is only written, never read on resume.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from disttune.errors import UserError

MARKER = "disttune_complete.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(path: Path) -> int | None:
    """The step of a ``checkpoint-N`` folder, or None for any other name."""
    match = _CHECKPOINT.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Every ``checkpoint-N`` folder in ``output_dir``, oldest step first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def read_marker(checkpoint: str | os.PathLike) -> dict | None:
    """The completion mark of ``checkpoint`` if it is there and every file it lists is intact, else None."""
    path = Path(checkpoint) / MARKER
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict):
        return None
    for name, size in (marker.get("files") or {}).items():
        file = Path(checkpoint) / name
        if not file.is_file() or file.stat().st_size != size:
            return None  # deleted or truncated after it was marked
    return marker


def is_complete(checkpoint: str | os.PathLike) -> bool:
    """Whether ``checkpoint`` carries an intact completion mark."""
    return read_marker(checkpoint) is not None


def newest_complete(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint in ``output_dir`` (None when there is none)."""
    complete = [p for p in list_checkpoints(output_dir) if is_complete(p)]
    return complete[-1] if complete else None


def _fsync_tree(folder: Path) -> dict[str, int]:
    """Flush every file under ``folder`` to disk; returns their sizes by relative path."""
    sizes = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER):
        with file.open("rb") as fh:
            os.fsync(fh.fileno())
        sizes[str(file.relative_to(folder))] = file.stat().st_size
    return sizes


def write_marker(checkpoint: Path, info: dict) -> None:
    """Mark ``checkpoint`` complete: files flushed first, then the mark written whole via rename."""
    marker = {**info, "files": _fsync_tree(checkpoint), "time": round(time.time(), 3)}
    tmp = checkpoint / (MARKER + ".tmp")
    with tmp.open("w") as fh:
        fh.write(json.dumps(marker, indent=2) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, checkpoint / MARKER)
    fd = os.open(checkpoint, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a power cut
    finally:
        os.close(fd)


def rotate(output_dir: str | os.PathLike, keep: int | None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond ``keep`` and incomplete ones older than the newest
    complete one (left by a crash, never resumable). Returns what was deleted."""
    checkpoints = list_checkpoints(output_dir)
    complete = [p for p in checkpoints if is_complete(p)]
    if not complete:
        return []
    doomed = [
        p for p in checkpoints if p not in complete and checkpoint_step(p) < checkpoint_step(complete[-1])
    ]
    if keep is not None and keep > 0:
        doomed += complete[: max(len(complete) - keep, 0)]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def resolve_resume(value: str | None, output_dir: str | os.PathLike) -> tuple[str | None, str | None]:
    """Turn ``--resume_from_checkpoint`` into a checkpoint path (or None) and a note saying what was chosen.

    ``latest``: the newest complete checkpoint in ``output_dir``, or a fresh start when there is none yet
    (so a requeued job can always pass it). ``true``: the same, but having no checkpoint is an error.
    A path: must be a complete checkpoint.
    """
    if value is None or str(value).lower() in ("", "none", "false"):
        return None, None
    word = str(value).lower()
    if word in ("latest", "true"):
        chosen = newest_complete(output_dir)
        incomplete = [p.name for p in list_checkpoints(output_dir) if not is_complete(p)]
        skipped = f" (skipped incomplete: {', '.join(incomplete)})" if incomplete else ""
        if chosen is not None:
            return str(chosen), f"resuming from {chosen} (newest complete checkpoint){skipped}"
        if word == "latest":
            return (
                None,
                f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir} yet: starting at step 0{skipped}",
            )
        raise UserError(
            f"--resume_from_checkpoint {value}: no complete checkpoint in {output_dir}{skipped}.\n"
            "  fix: use 'latest' to start fresh when there is none, or give a checkpoint folder."
        )
    path = Path(value)
    if not path.is_dir():
        raise UserError(
            f"--resume_from_checkpoint {value}: no such folder.\n"
            f"  fix: give a checkpoint-N folder, or 'latest' for the newest complete one in --output_dir."
        )
    if not is_complete(path):
        newest = newest_complete(path.parent)
        hint = f"resume from {newest} instead, or " if newest else ""
        raise UserError(
            f"--resume_from_checkpoint {value}: incomplete checkpoint (no intact {MARKER}: a save was "
            "interrupted, or it was not written by disttune).\n"
            f"  fix: {hint}pass 'latest' to pick the newest complete checkpoint."
        )
    return str(path), f"resuming from {path}"


def new_run_id(resume_from: str | None) -> str:
    """An id for this launch's lines in ``metrics.jsonl``: ``<UTC time>-<6 hex>``, plus
    ``-from-step<N>`` when it resumed, so a reader can tell which lines came after a resume."""
    import uuid

    run_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    step = checkpoint_step(Path(resume_from)) if resume_from else None
    return f"{run_id}-from-step{step}" if step is not None else run_id
