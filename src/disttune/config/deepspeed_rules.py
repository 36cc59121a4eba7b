"""Cross-field rules of a DeepSpeed JSON config (DeepSpeed 0.19.8, alone or through accelerate / HF Trainer)."""

from __future__ import annotations

import difflib

from disttune.config.derived import DEEPSPEED, DEEPSPEED_VERSION
from disttune.config.findings import Finding, error, warning
from disttune.config.zero import concrete_int, rule_zero, truth, zero_from_json


def json_zero_stage(data: dict) -> int | None:
    """The ZeRO stage the JSON asks for (``None`` when missing, ``"auto"`` or invalid)."""
    zero = data.get("zero_optimization")
    return concrete_int(zero.get("stage", 0)) if isinstance(zero, dict) else None


def json_precision(data: dict) -> tuple[str | None, str | None]:
    """(precision, key) the JSON pins: ``"bf16"``/``"fp16"``/``"no"``, or ``None`` when it leaves it open."""
    flags = {}
    for name, section in (("bf16", "bf16"), ("bf16", "bfloat16"), ("fp16", "fp16")):
        block = data.get(section)
        if isinstance(block, dict) and block.get("enabled") not in (None, "auto"):
            flags.setdefault(name, (truth(block["enabled"]), f"{section}.enabled"))
    for name in ("bf16", "fp16"):
        if flags.get(name, (False,))[0]:
            return name, flags[name][1]
    if flags and all(v is False for v, _ in flags.values()):
        return "no", next(iter(flags.values()))[1]
    return None, None


def check_deepspeed_rules(
    data: dict, file: str, world: int | None, under_accelerate: bool = True
) -> list[Finding]:
    """ZeRO stage vs offload, NVMe paths, fp16+bf16, loss scaling, optimizer and scheduler names, batch sizes.

    ``under_accelerate``: an accelerate config points to this JSON, so what accelerate requires of it is an
    error; for a JSON given alone it is a warning that says "under accelerate".
    """
    out: list[Finding] = []
    zero = data.get("zero_optimization")
    if zero is None:
        stops = "stops with 'Please specify the ZeRO optimization config in the DeepSpeed config'"
        if under_accelerate:
            message = f"missing: accelerate (and HF Trainer through it) {stops}"
            out.append(error(file, "zero_optimization", None, message, _ADD_ZERO))
        else:
            message = (
                f"missing: fine for DeepSpeed alone (it runs without ZeRO), but under accelerate it {stops}"
            )
            out.append(warning(file, "zero_optimization", None, message, _ADD_ZERO))
    if isinstance(zero, dict):
        out += rule_zero(zero_from_json(file, zero))
        out += _zero(zero, file, json_zero_stage(data))
    both = [s for s in ("fp16", "bf16") if isinstance(data.get(s), dict) and truth(data[s].get("enabled"))]
    if len(both) == 2:
        out.append(
            error(
                file,
                "bf16.enabled",
                True,
                "fp16 and bf16 are both enabled; DeepSpeed allows only one",
                'set one of fp16.enabled / bf16.enabled to false (or both to "auto")',
            )
        )
    out += _loss_scaling(data, file)
    out += _buildable(data, file)
    out += _batch(data, file, world)
    return out


_ADD_ZERO = 'add "zero_optimization": {"stage": 2} (0 disables ZeRO)'


def _loss_scaling(data: dict, file: str) -> list[Finding]:
    """DeepSpeedFP16Config: with dynamic loss scaling (fp16 on, loss_scale 0) the window and floor must be > 0."""
    fp16 = data.get("fp16")
    if not isinstance(fp16, dict) or fp16.get("loss_scale", 0) not in (0, 0.0, "0"):
        return []
    enabled = fp16.get("enabled")
    out = []
    for name, default in (("loss_scale_window", 1000), ("min_loss_scale", 1)):
        value = fp16.get(name, default)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
            said = (
                f"with dynamic loss scaling (loss_scale 0) DeepSpeed {DEEPSPEED_VERSION} requires {name} > 0"
            )
            fix = f"set fp16.{name} to 1 or more (default {default})"
            if truth(enabled):
                out.append(error(file, f"fp16.{name}", value, f"{said} and stops otherwise", fix))
            elif enabled == "auto":
                out.append(
                    warning(file, f"fp16.{name}", value, f"{said}: refused if fp16 ends up enabled", fix)
                )
    return out


def _buildable(data: dict, file: str) -> list[Finding]:
    """The optimizer and scheduler DeepSpeed must build from the config exist in this DeepSpeed (and torch)."""
    out = []
    for block, names, lower in (
        ("optimizer", DEEPSPEED["optimizers"], True),
        ("scheduler", DEEPSPEED["schedulers"], False),
    ):
        spec = data.get(block)
        kind = spec.get("type") if isinstance(spec, dict) else None
        if not isinstance(kind, str):
            continue
        ours = kind.lower() in names["deepspeed"] if lower else kind in names["deepspeed"]
        if ours or kind in names["torch"]:
            continue
        known = names["deepspeed"] + names["torch"]
        close = difflib.get_close_matches(kind.lower() if lower else kind, known, n=1)
        out.append(
            error(
                file,
                f"{block}.type",
                kind,
                f"DeepSpeed {DEEPSPEED_VERSION} cannot build {block} {kind!r} (neither one of its own nor a torch "
                f"class of that name): it stops when it creates the {block}",
                (f"did you mean {close[0]!r}? " if close else "") + f"use one of: {', '.join(known)}",
            )
        )
    params = data.get("optimizer", {}).get("params") if isinstance(data.get("optimizer"), dict) else None
    if isinstance(params, dict) and "max_grad_norm" in params:
        out.append(
            error(
                file,
                "optimizer.params.max_grad_norm",
                params["max_grad_norm"],
                "DeepSpeed refuses max_grad_norm as an optimizer parameter (ValueError)",
                'remove it and set the top-level "gradient_clipping" instead',
            )
        )
    return out


def _zero(zero: dict, file: str, stage: int | None) -> list[Finding]:
    """The JSON-only ZeRO rules (the ones shared with the YAML are in zero.py)."""
    out: list[Finding] = []
    p = "zero_optimization."
    block = zero.get("offload_optimizer")
    ratio = block.get("ratio") if isinstance(block, dict) else None
    if isinstance(ratio, (int, float)) and ratio < 1 and stage != 3:
        out.append(
            error(
                file,
                f"{p}offload_optimizer.ratio",
                ratio,
                "partial optimizer offload (ratio < 1) is only supported with ZeRO-3; DeepSpeed asserts",
                'use "stage": 3, or remove ratio',
            )
        )
    if truth(zero.get("compute_grad_norm")) is False and stage not in (1, 2):
        out.append(
            error(
                file,
                p + "compute_grad_norm",
                zero["compute_grad_norm"],
                "compute_grad_norm false is supported only with ZeRO stage 1 or 2 (DeepSpeed raises)",
                "remove compute_grad_norm, or use stage 1 or 2",
            )
        )
    return out


def _batch(data: dict, file: str, world: int | None) -> list[Finding]:
    """DeepSpeed asserts train_batch_size == train_micro_batch_size_per_gpu * gradient_accumulation_steps * world."""
    tbs = concrete_int(data.get("train_batch_size"))
    micro = concrete_int(data.get("train_micro_batch_size_per_gpu"))
    gas = concrete_int(data.get("gradient_accumulation_steps"))
    if tbs is not None and micro is None and gas is not None and world is not None and gas * world > 0:
        # DeepSpeed derives micro = train_batch_size // (gradient_accumulation_steps x processes) and asserts
        # that it is above 0 and divides evenly (accelerate fills the micro batch from the dataloader instead,
        # which then has to multiply back to train_batch_size).
        if tbs % (gas * world) != 0:
            return [
                error(
                    file,
                    "train_batch_size",
                    tbs,
                    f"train_batch_size {tbs} cannot be split over gradient_accumulation_steps x processes = "
                    f"{gas} x {world} = {gas * world} (a micro-batch of {tbs / (gas * world):g} per process); "
                    "DeepSpeed asserts",
                    f'set "train_batch_size": "auto", or a multiple of {gas * world}',
                )
            ]
        return []
    if tbs is None or micro is None or gas is None:
        return []
    if world is not None and tbs != micro * gas * world:
        return [
            error(
                file,
                "train_batch_size",
                tbs,
                f"train_batch_size must equal train_micro_batch_size_per_gpu x gradient_accumulation_steps x "
                f"processes = {micro} x {gas} x {world} = {micro * gas * world}; DeepSpeed asserts",
                f'set "train_batch_size": {micro * gas * world}, or "auto"',
            )
        ]
    if world is None and (micro * gas == 0 or tbs % (micro * gas) != 0):
        return [
            error(
                file,
                "train_batch_size",
                tbs,
                f"train_batch_size is not a multiple of train_micro_batch_size_per_gpu x "
                f"gradient_accumulation_steps = {micro * gas}, so no number of processes fits",
                'set "train_batch_size": "auto" (filled from the other two and the world size)',
            )
        ]
    return []
