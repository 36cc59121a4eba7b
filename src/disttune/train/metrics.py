"""Run records: ``metrics.jsonl`` (one line per logged step) and ``run_summary.json``.

Only the main process writes. Tokens per second come from the trainer's own token count
(``include_num_input_tokens_seen``), gathered across ranks, between two log lines.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from transformers import TrainerCallback


def _clean(value):
    """JSON-safe numbers: NaN/inf become None so the file stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsCallback(TrainerCallback):
    """Appends one JSON object per logged training step to ``<output_dir>/metrics.jsonl``."""

    def __init__(self, output_dir: str, run_id: str | None = None):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.run_id = run_id
        self.losses: list[float] = []
        self._last_time: float | None = None
        self._last_tokens = 0
        self.total_time = 0.0
        self.total_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time = time.perf_counter()
        self._last_tokens = state.num_input_tokens_seen or 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return  # the final summary log of Trainer.train, or an eval log
        now = time.perf_counter()
        tokens = state.num_input_tokens_seen or 0
        elapsed = now - (self._last_time or now)
        new_tokens = tokens - self._last_tokens
        self._last_time, self._last_tokens = now, tokens
        self.total_time += elapsed
        self.total_tokens += new_tokens
        self.losses.append(float(logs["loss"]))
        if not state.is_world_process_zero:
            return
        record = {
            "step": state.global_step,
            "epoch": _clean(logs.get("epoch")),
            "loss": _clean(float(logs["loss"])),
            "learning_rate": _clean(logs.get("learning_rate")),
            "grad_norm": _clean(float(logs["grad_norm"])) if logs.get("grad_norm") is not None else None,
            "tokens": new_tokens,
            "tokens_per_second": round(new_tokens / elapsed, 2) if elapsed > 0 else None,
            "time": round(time.time(), 3),
        }
        if self.run_id is not None:
            record["run_id"] = self.run_id
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    @property
    def tokens_per_second(self) -> float | None:
        return round(self.total_tokens / self.total_time, 2) if self.total_time > 0 else None


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` atomically (temporary file, then rename) so a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)
