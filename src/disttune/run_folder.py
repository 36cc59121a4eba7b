"""The run folder (``--output_dir``): every file a training run writes there, named in one place.

    runs/sft/                       RunFolder("runs/sft")
      metrics.jsonl                 .metrics        one record per logged step (train/metrics.py)
      trainer_log.jsonl             .trainer_log    transformers' log dicts (train/console.py)
      run_summary.json              .summary        the finished run's figures (train/main.py)
      final/ final.partial/         .final .final_partial   the trained model, checked (train/save.py)
      final_merged/                 .final_merged   with --merge_lora
      checkpoint-N/                 .checkpoint(N)  transformers' checkpoints, marked complete (train/checkpoints.py)
      portable/checkpoint-N/        .portable(ckpt) a checkpoint converted for another layout (train/portable.py)
      hang_rank{R}.txt              .hang_dump(R)   Python stacks of a hung rank (--hang_dump_s)
      runs/disttune-<run id>/       .tensorboard(id) disttune's TensorBoard scalars (--report_to tensorboard)
      .disttune/                    .state          records of the job's attempts (train/failure.py, restarts.py)
        progress.json               .progress       the last finished step of this attempt
        attempt-K/rank-R.json       .failure_file(K, R)  how rank R's attempt K ended
        restarts.json               .restarts       one entry per restart of the job

Plain paths and small JSON readers only (no torch, no transformers): ``disttune report``, ``bench`` and
``launch`` read a run through this without importing the training code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunFolder:
    """The files of one run folder; ``root`` is the script's ``--output_dir``."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    # --- what the run writes for people ---------------------------------------------------------------
    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def trainer_log(self) -> Path:
        return self.root / "trainer_log.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "run_summary.json"

    @property
    def final(self) -> Path:
        return self.root / "final"

    @property
    def final_partial(self) -> Path:
        """Where a run that extends a finished one writes its model until it has been checked."""
        return self.root / "final.partial"

    @property
    def final_merged(self) -> Path:
        return self.root / "final_merged"

    def checkpoint(self, step: int) -> Path:
        return self.root / f"checkpoint-{step}"

    @staticmethod
    def portable(checkpoint: str | os.PathLike) -> Path:
        """The portable form of ``checkpoint``, beside it: ``<its folder>/portable/<its name>``."""
        checkpoint = Path(checkpoint)
        return checkpoint.parent / "portable" / checkpoint.name

    def hang_dump(self, rank: int) -> Path:
        return self.root / f"hang_rank{rank}.txt"

    def tensorboard(self, run_id: str | None) -> Path:
        """disttune's TensorBoard scalars, beside transformers' run folders: one folder per launch."""
        return self.root / "runs" / f"disttune-{run_id or 'run'}"

    # --- the job's own records ------------------------------------------------------------------------
    @property
    def state(self) -> Path:
        return self.root / ".disttune"

    @property
    def progress(self) -> Path:
        return self.state / "progress.json"

    @property
    def restarts(self) -> Path:
        return self.state / "restarts.json"

    def attempt(self, attempt: int) -> Path:
        return self.state / f"attempt-{attempt}"

    def failure_file(self, attempt: int, rank: int) -> Path:
        return self.attempt(attempt) / f"rank-{rank}.json"

    # --- what tells a finished run from an empty folder -----------------------------------------------
    @property
    def results(self) -> list[Path]:
        """The files whose presence means the folder holds a run's results (refused without --overwrite)."""
        return [self.final, self.metrics, self.summary]

    @property
    def records(self) -> list[Path]:
        """The record files a new run replaces under --overwrite_output_dir (appended to otherwise)."""
        return [self.metrics, self.trainer_log, self.summary]

    def read_summary(self) -> dict | None:
        """``run_summary.json`` (None when the run did not finish or the file is damaged)."""
        return read_json(self.summary)


def read_json(path: Path, default=None):
    """A JSON file's content, or ``default`` when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def write_json(path: Path, data, indent: int | None = 2) -> None:
    """Write ``data`` atomically (a temporary file of this process, then a rename): a reader never sees half
    a file, and two processes writing the same file never mix their bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=indent, default=str) + "\n")
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file (``[]`` when there is none). A line that is not JSON raises
    ``ValueError`` naming the file and the line number."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}, line {number}: not valid JSON ({exc.msg}): {line[:80]!r}") from exc
    return records


def append_jsonl(path: Path, record: dict) -> None:
    """Add one record to a JSON-lines file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
