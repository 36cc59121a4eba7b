"""The training metrics: ``metrics.jsonl`` in the run folder, one record per logged step.

Only the main process writes. Per log line: the total tokens/s (the trainer's own gathered count,
``include_num_input_tokens_seen``), each rank's tokens/s (its own non-padding tokens, counted by a
forward pre-hook without a device sync, over its own clock), MFU where the GPU's peak is known
(``measure.PEAK_FLOPS``; null on CPU) and each rank's peak memory. The callback also installs the
``StepProbe`` that measures model-state bytes around one optimizer step (``measure.py``).

With ``--report_to tensorboard`` the same figures go to TensorBoard as ``disttune/*`` scalars, in a run of
their own beside transformers' (``<output_dir>/runs/disttune-<run_id>``): transformers calls the report
integrations' ``on_log`` before a user callback's, so figures added to its ``logs`` would arrive too late.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from transformers import TrainerCallback

from disttune.run_folder import RunFolder, append_jsonl, read_jsonl


def _clean(value):
    """JSON-safe numbers: NaN/inf become None so the file stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsCallback(TrainerCallback):
    """Appends one JSON object per logged training step to ``<output_dir>/metrics.jsonl``."""

    def __init__(self, output_dir: str, run_id: str | None = None, probe_step: int = 2):
        self.folder = RunFolder(output_dir)
        self.path = self.folder.metrics
        self.run_id = run_id
        self.probe_step = probe_step
        self.probe = None
        self.losses: list[float] = []
        self._last_time: float | None = None
        self._last_tokens = 0
        self.total_time = 0.0
        self.total_tokens = 0
        # this rank's own counts, filled by the forward pre-hook
        self._rank_tokens = 0  # an int, or a device tensor until read at log time (no sync per step)
        self._rank_last = 0
        self._rows = 0
        self._row_len_sum = 0
        self._attention_pairs = 0  # sum over documents of s_i^2 (an int, or a device tensor until log time)
        self._documents_sq = 0  # the same, read back at the last log
        self._documents_tokens = 0  # the tokens of those documents, read back at the last log
        self.shape: dict = {}
        self.peak: float | None = None
        self.world_size = 1
        self.device_name: str | None = None
        self.tb_writer = None  # rank 0's TensorBoard writer with --report_to tensorboard
        self.last_record: dict | None = None  # rank 0's latest metrics.jsonl record (the console's step line)

    def _count(self, module, args, kwargs):
        if not module.training:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            return
        mask = kwargs.get("attention_mask")
        mask = mask if mask is not None and mask.dim() == 2 else None  # not a 4-D attention bias
        self._rank_tokens = self._rank_tokens + (mask.sum() if mask is not None else ids.numel())
        self._attention_pairs = self._attention_pairs + document_square_sum(
            ids, mask, kwargs.get("position_ids")
        )
        self._rows += int(ids.shape[0]) if ids.dim() > 1 else 1
        self._row_len_sum += int(ids.numel())

    def on_train_begin(self, args, state, control, **kwargs):
        import torch

        from disttune.train.measure import StepProbe, model_shape, peak_flops

        model, optimizer = kwargs.get("model"), kwargs.get("optimizer")
        if model is not None:
            self.shape = model_shape(model)
            model.register_forward_pre_hook(self._count, with_kwargs=True)
            if optimizer is not None:
                at = min(self.probe_step, args.max_steps) if args.max_steps > 0 else self.probe_step
                self.probe = StepProbe(model, optimizer, at_step=max(at, 1))
        if torch.cuda.is_available() and args.device.type == "cuda":
            self.device_name = torch.cuda.get_device_name(args.device)
            self.peak = peak_flops(self.device_name)
        self.world_size = args.world_size
        if state.is_world_process_zero and "tensorboard" in (args.report_to or ()):
            from torch.utils.tensorboard import SummaryWriter

            self.tb_writer = SummaryWriter(log_dir=str(self.folder.tensorboard(self.run_id)))
        self._last_time = time.perf_counter()
        self._last_tokens = state.num_input_tokens_seen or 0

    @property
    def mean_seq_len(self) -> float:
        """Mean padded row length of the training batches this rank computed on (a packed, padding-free
        batch is one row of several documents: not the attention context)."""
        return self._row_len_sum / self._rows if self._rows else 0.0

    @property
    def attention_context(self) -> float:
        """The mean attention context per token: sum of s_i^2 over sum of s_i, over the documents (one per
        padded row, or per packed document) of the batches read back at the last log."""
        return self._documents_sq / self._documents_tokens if self._documents_tokens else 0.0

    def flops_per_token(self) -> float | None:
        """6N + 12 L h s, s the per-document attention context (``measure.flops_per_token``)."""
        from disttune.train.measure import flops_per_token

        if not self.shape or not self._documents_tokens:
            return None
        return flops_per_token(
            self.shape["num_params"],
            self.shape["embedding_params"],
            self.shape["num_layers"],
            self.shape["hidden_size"],
            self.attention_context,
        )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return  # the final summary log of Trainer.train, or an eval log
        from disttune.train.measure import gather, mfu, peak_memory_bytes

        now = time.perf_counter()
        tokens = state.num_input_tokens_seen or 0
        elapsed = now - (self._last_time or now)
        new_tokens = tokens - self._last_tokens
        self._last_time, self._last_tokens = now, tokens
        self.total_time += elapsed
        self.total_tokens += new_tokens
        self.losses.append(float(logs["loss"]))
        rank_tokens, pairs = _read_counts(self._rank_tokens, self._attention_pairs)  # at log time only
        rank_new, self._rank_last = rank_tokens - self._rank_last, rank_tokens
        self._documents_sq, self._documents_tokens = pairs, rank_tokens
        peak_mem, _ = peak_memory_bytes(args.device)
        per_rank = gather(
            (round(rank_new / elapsed, 2) if elapsed > 0 else None, peak_mem)
        )  # every rank logs
        if not state.is_world_process_zero:
            return
        tps = round(new_tokens / elapsed, 2) if elapsed > 0 else None
        fpt = self.flops_per_token()
        step_mfu = mfu(tps, fpt, self.peak, self.world_size)
        record = {
            "step": state.global_step,
            "epoch": _clean(logs.get("epoch")),
            "loss": _clean(float(logs["loss"])),
            "learning_rate": _clean(logs.get("learning_rate")),
            "grad_norm": _clean(float(logs["grad_norm"])) if logs.get("grad_norm") is not None else None,
            "tokens": new_tokens,
            "tokens_per_second": tps,
            "tokens_per_second_per_rank": [p[0] for p in per_rank],
            "flops_per_token": round(fpt) if fpt else None,
            "mfu": _round(step_mfu),
            "peak_memory_bytes": [p[1] for p in per_rank],
            "time": round(time.time(), 3),
        }
        if self.run_id is not None:
            record["run_id"] = self.run_id
        self.last_record = record
        append_jsonl(self.path, record)
        if self.tb_writer is not None:
            for tag, value in tensorboard_scalars(record).items():
                self.tb_writer.add_scalar(tag, value, record["step"])
            self.tb_writer.flush()

    def on_train_end(self, args, state, control, **kwargs):
        if self.tb_writer is not None:
            self.tb_writer.close()
            self.tb_writer = None

    @property
    def tokens_per_second(self) -> float | None:
        return round(self.total_tokens / self.total_time, 2) if self.total_time > 0 else None

    def summary(self) -> dict:
        """Throughput and MFU over the whole run, for ``run_summary.json`` (rank 0's view)."""
        from disttune.train.measure import PEAK_FLOPS, mfu

        fpt = self.flops_per_token()
        return {
            "flops_per_token": round(fpt) if fpt else None,
            "flops_per_token_formula": FLOPS_FORMULA.format(s=self.attention_context),
            "device_name": self.device_name,
            "peak_flops_per_device": self.peak,
            "peak_flops_known_devices": [k for k, _ in PEAK_FLOPS],
            "mfu": _round(mfu(self.tokens_per_second, fpt, self.peak, self.world_size)),
        }


FLOPS_FORMULA = (
    "6*(N - input embedding) + 12*L*h*s, s = sum(s_i^2)/sum(s_i) over the documents trained on ({s:.1f}): "
    "each document's own length s_i (a padded row's non-padding tokens, a packed document's tokens), "
    "causal masking not discounted (PaLM's convention)"
)


def document_square_sum(ids, mask=None, position_ids=None):
    """Sum of s_i^2 over the documents of one batch, on the batch's device (no host read).

    Documents: with ``position_ids`` (packed rows, padding-free or not), the runs that restart at position 0;
    the identity sum_{p<s} (2p + 1) = s^2 gives sum_i s_i^2 as one reduction over the tokens. Otherwise each
    row is one document of ``mask``'s non-padding tokens (all of the row without a mask).
    """
    if position_ids is not None and position_ids.shape == ids.shape:
        odd = 2 * position_ids + 1
        return (odd * mask).sum() if mask is not None else odd.sum()
    if mask is not None:
        return (mask.sum(dim=-1) ** 2).sum()
    rows = ids.shape[0] if ids.dim() > 1 else 1
    return rows * ids.shape[-1] ** 2


def _read_counts(*values) -> list[int]:
    """Device counters as ints, in one host read."""
    import torch

    tensors = [v for v in values if torch.is_tensor(v)]
    if not tensors:
        return [int(v) for v in values]
    read = iter(torch.stack([t.to(torch.int64) for t in tensors]).tolist())
    return [next(read) if torch.is_tensor(v) else int(v) for v in values]


def _round(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None


def tensorboard_scalars(record: dict) -> dict[str, float]:
    """disttune's figures of one ``metrics.jsonl`` record as TensorBoard tags (unknown values left out).

    ``disttune/tokens_per_second`` (all ranks), ``disttune/tokens_per_second/rankN``, ``disttune/mfu``
    (GPU with a known peak only) and ``disttune/peak_memory_MiB/rankN`` (bytes / 2**20).
    """
    tags = {"disttune/tokens_per_second": record.get("tokens_per_second"), "disttune/mfu": record.get("mfu")}
    for rank, value in enumerate(record.get("tokens_per_second_per_rank") or []):
        tags[f"disttune/tokens_per_second/rank{rank}"] = value
    for rank, value in enumerate(record.get("peak_memory_bytes") or []):
        tags[f"disttune/peak_memory_MiB/rank{rank}"] = value / 2**20 if value is not None else None
    return {tag: value for tag, value in tags.items() if value is not None}


def read_metrics(output_dir: str | Path) -> list[dict]:
    """The records ``MetricsCallback`` wrote to ``<output_dir>/metrics.jsonl`` (``[]`` when there is none).
    A line that is not JSON raises ``ValueError`` naming the file and the line number."""
    return read_jsonl(RunFolder(output_dir).metrics)
