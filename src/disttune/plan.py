"""Batch arithmetic: global batch, gradient accumulation, learning-rate scaling, steps per epoch.

Everything here is a pure function of plain numbers; the training script and ``disttune plan`` share it.
The one formula everything follows (the same as accelerate, DeepSpeed and the HF Trainer):

    global_batch_size = per_device_train_batch_size x num_processes x gradient_accumulation_steps
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from disttune.errors import UserError

LR_RULES = ("none", "sqrt", "linear")


@dataclass(frozen=True)
class BatchPlan:
    """One consistent batch layout (all counts are sequences, not tokens)."""

    num_processes: int
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    global_batch_size: int
    learning_rate: float | None = None
    tokens_per_step: int | None = None  # global_batch_size x max_length (an upper bound with padding)
    steps_per_epoch: int | None = None  # optimizer updates per epoch, counted as the HF Trainer counts them


def _ceil_div(x: int, y: int) -> int:
    return -(-x // y)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name} must be a positive whole number, got {value!r}; pass e.g. --{name} 1.")
    return value


def global_batch_size(per_device: int, num_processes: int, accumulation: int) -> int:
    """global = per_device x num_processes x accumulation (sequences per optimizer step)."""
    _positive_int("per_device_train_batch_size", per_device)
    _positive_int("num_processes", num_processes)
    _positive_int("gradient_accumulation_steps", accumulation)
    return per_device * num_processes * accumulation


def scale_learning_rate(lr_base: float, global_batch: int, base_global_batch: int, rule: str) -> float:
    """Scale a learning rate tuned at ``base_global_batch`` to ``global_batch``.

    none: lr = lr_base;  sqrt: lr = lr_base x sqrt(B / B_base) (Adam, Malladi et al. 2022);
    linear: lr = lr_base x B / B_base (SGD, Goyal et al. 2017).
    """
    if rule not in LR_RULES:
        raise UserError(f"lr_scaling must be one of {', '.join(LR_RULES)}, got {rule!r}.")
    if not isinstance(lr_base, (int, float)) or isinstance(lr_base, bool) or not lr_base > 0:
        raise UserError(
            f"learning_rate must be a positive number, got {lr_base!r}; e.g. --learning_rate 2e-5."
        )
    _positive_int("global_batch_size", global_batch)
    _positive_int("global_batch_size", base_global_batch)
    ratio = global_batch / base_global_batch
    if rule == "sqrt":
        return lr_base * math.sqrt(ratio)
    if rule == "linear":
        return lr_base * ratio
    return float(lr_base)


def steps_per_epoch(
    num_examples: int, per_device: int, num_processes: int, accumulation: int, drop_last: bool = False
) -> int:
    """Optimizer updates per epoch, exactly as transformers 5.23 ``Trainer`` counts them.

    accelerate shards the batch sampler (``BatchSamplerShard.__len__``, even_batches=True), so each rank's
    dataloader has ``len = ceil(ceil(N / b) / W)`` batches (``floor(floor(N / b) / W)`` with
    ``dataloader_drop_last``); ``Trainer.set_initial_training_values`` then counts
    ``max(len // A + (len % A > 0), 1)`` updates: a last, partial accumulation window still steps.
    Without drop_last this equals ``ceil(N / global_batch_size)``.
    """
    n = _positive_int("num_examples", num_examples)
    b = _positive_int("per_device_train_batch_size", per_device)
    w = _positive_int("num_processes", num_processes)
    a = _positive_int("gradient_accumulation_steps", accumulation)
    batches_per_rank = (n // b) // w if drop_last else _ceil_div(_ceil_div(n, b), w)
    return max(_ceil_div(batches_per_rank, a), 1)


def _options(global_batch: int, num_processes: int, limit: int = 6) -> list[BatchPlan]:
    """Valid layouts for a global batch on ``num_processes``: every per-device batch b with b*W | G."""
    out = []
    if global_batch % num_processes:
        return out
    per_rank = global_batch // num_processes
    for b in sorted((d for d in range(1, per_rank + 1) if per_rank % d == 0), reverse=True):
        out.append(BatchPlan(num_processes, b, per_rank // b, global_batch))
    return out[:limit]


def nearest_global_batches(global_batch: int, multiple: int) -> list[int]:
    """The multiples of ``multiple`` just below and above ``global_batch`` (one if it is below ``multiple``)."""
    lower = (global_batch // multiple) * multiple
    return [g for g in (lower, lower + multiple) if g > 0]


def _not_divisible(what: str, options: list[BatchPlan]) -> UserError:
    err = UserError(f"{what} Nearest valid options: " + "; ".join(describe(p) for p in options) + ".")
    err.options = options  # type: ignore[attr-defined]
    return err


def describe(plan: BatchPlan) -> str:
    """``4 x 4 x 1 = 16`` style one-liner: processes x per-device x accumulation = global."""
    return (
        f"num_processes={plan.num_processes} per_device_train_batch_size={plan.per_device_train_batch_size} "
        f"gradient_accumulation_steps={plan.gradient_accumulation_steps} (global {plan.global_batch_size})"
    )


def solve(
    num_processes: int,
    per_device: int | None = None,
    accumulation: int | None = None,
    global_batch: int | None = None,
) -> BatchPlan:
    """Given ``num_processes`` and any two of per-device batch, accumulation and global batch, find the third.

    accumulation = G / (b x W), per_device = G / (A x W); both must divide exactly. When they do not,
    the ``UserError`` lists the nearest valid layouts (also on ``error.options`` as ``BatchPlan``s).
    If all three are given they must agree.
    """
    w = _positive_int("num_processes", num_processes)
    given = [x is not None for x in (per_device, accumulation, global_batch)]
    if sum(given) < 2:
        raise UserError(
            "give two of --per_device_train_batch_size, --gradient_accumulation_steps and "
            "--global_batch_size (with --num_processes) to compute the third."
        )
    if per_device is not None and accumulation is not None:
        g = global_batch_size(per_device, w, accumulation)
        if global_batch is not None and global_batch != g:
            raise UserError(
                f"global_batch_size {global_batch} disagrees with {per_device} x {w} x {accumulation} "
                f"= {g}; drop one of the three flags or fix it."
            )
        return BatchPlan(w, per_device, accumulation, g)
    g = _positive_int("global_batch_size", global_batch)
    known_name, known = (
        ("per_device_train_batch_size", per_device)
        if per_device is not None
        else ("gradient_accumulation_steps", accumulation)
    )
    _positive_int(known_name, known)
    if g % (known * w) == 0:
        other = g // (known * w)
        if per_device is not None:
            return BatchPlan(w, per_device, other, g)
        return BatchPlan(w, other, accumulation, g)  # type: ignore[arg-type]
    options = [p for p in _options(g, w) if getattr(p, known_name) == known]
    for near in nearest_global_batches(g, known * w):
        b, a = (known, near // (known * w)) if per_device is not None else (near // (known * w), known)
        options.append(BatchPlan(w, b, a, near))
    options += [p for p in _options(g, w) if p not in options]
    raise _not_divisible(
        f"global_batch_size {g} is not divisible by {known_name} {known} x num_processes {w} = {known * w}.",
        options[:5],
    )


def convert(
    plan: BatchPlan, to_num_processes: int, per_device: int | None = None, lr_scaling: str = "sqrt"
) -> BatchPlan:
    """Move ``plan`` to ``to_num_processes`` keeping the global batch, so the learning rate stays.

    Keeps the per-device batch and changes accumulation: A' = G / (b x W'), e.g. 1 GPU x 4 x 4 -> 4 GPUs
    x 4 x 1 (global 16). If that does not divide, the largest b' < b with b' x W' | G is used. If W' does
    not divide G at all, the ``UserError`` lists the nearest valid options (``error.options``).
    ``per_device`` forces b' instead: A' = max(1, round(G / (b' x W'))) and, when the global batch then
    changes, the learning rate is rescaled by ``lr_scaling`` (see ``scale_learning_rate``).
    """
    w = _positive_int("to_num_processes", to_num_processes)
    g = plan.global_batch_size
    lr = plan.learning_rate
    if per_device is not None:
        b2 = _positive_int("per_device_train_batch_size", per_device)
        a2 = max(1, round(g / (b2 * w)))
        g2 = b2 * w * a2
        if lr is not None and g2 != g:
            lr = scale_learning_rate(lr, g2, g, lr_scaling)
        return BatchPlan(w, b2, a2, g2, lr)
    b = plan.per_device_train_batch_size
    candidates = [d for d in range(b, 0, -1) if g % (d * w) == 0]
    if candidates:
        b2 = candidates[0]
        return BatchPlan(w, b2, g // (b2 * w), g, lr)
    options = []
    for near in nearest_global_batches(g, w):
        per_rank = near // w
        b2 = max(d for d in range(1, min(b, per_rank) + 1) if per_rank % d == 0)
        near_lr = scale_learning_rate(lr, near, g, lr_scaling) if lr is not None else None
        options.append(BatchPlan(w, b2, per_rank // b2, near, near_lr))
    raise _not_divisible(
        f"global batch {g} cannot be split over {w} processes ({g} is not a multiple of {w}), "
        f"so the global batch must change (and with it the learning rate, by {lr_scaling} "
        f"scaling).",
        options,
    )


def with_derived(
    plan: BatchPlan, max_length: int | None = None, num_examples: int | None = None, drop_last: bool = False
) -> BatchPlan:
    """``plan`` with ``tokens_per_step`` (G x max_length) and ``steps_per_epoch`` filled when inputs are given."""
    tokens = (
        plan.global_batch_size * _positive_int("max_length", max_length) if max_length is not None else None
    )
    steps = (
        steps_per_epoch(
            num_examples,
            plan.per_device_train_batch_size,
            plan.num_processes,
            plan.gradient_accumulation_steps,
            drop_last,
        )
        if num_examples is not None
        else None
    )
    return BatchPlan(
        plan.num_processes,
        plan.per_device_train_batch_size,
        plan.gradient_accumulation_steps,
        plan.global_batch_size,
        plan.learning_rate,
        tokens,
        steps,
    )
