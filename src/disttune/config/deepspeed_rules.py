"""Cross-field rules of a DeepSpeed JSON config (DeepSpeed 0.19.8, as used through accelerate / HF Trainer)."""

from __future__ import annotations

from disttune.config.findings import Finding, error
from disttune.config.rules import as_int, truth


def concrete_int(value: object) -> int | None:
    """An int that is really written down (not ``"auto"``, not missing)."""
    return None if value == "auto" else as_int(value)


def json_stage(data: dict) -> int | None:
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


def check_deepspeed_rules(data: dict, file: str, world: int | None) -> list[Finding]:
    """ZeRO stage vs offload, NVMe paths, fp16+bf16, and the batch-size triple."""
    out: list[Finding] = []
    zero = data.get("zero_optimization")
    if zero is None:
        out.append(error(file, "zero_optimization", None,
                         "missing: accelerate (and HF Trainer through it) stops with 'Please specify the ZeRO "
                         "optimization config in the DeepSpeed config'",
                         'add "zero_optimization": {"stage": 2} (0 disables ZeRO)'))  # fmt: skip
    if isinstance(zero, dict):
        out += _zero(zero, file, json_stage(data))
    both = [s for s in ("fp16", "bf16") if isinstance(data.get(s), dict) and truth(data[s].get("enabled"))]
    if len(both) == 2:
        out.append(error(file, "bf16.enabled", True, "fp16 and bf16 are both enabled; DeepSpeed allows only one",
                         "set one of fp16.enabled / bf16.enabled to false (or both to \"auto\")"))  # fmt: skip
    out += _batch(data, file, world)
    return out


def _zero(zero: dict, file: str, stage: int | None) -> list[Finding]:
    out: list[Finding] = []
    p = "zero_optimization."
    for what in ("param", "optimizer"):
        block = zero.get(f"offload_{what}")
        if not isinstance(block, dict):
            continue
        device = str(block.get("device") or "none").lower()
        if device == "nvme" and not block.get("nvme_path"):
            out.append(error(file, f"{p}offload_{what}.nvme_path", None,
                             f"offload_{what}.device is nvme but nvme_path is missing",
                             'add "nvme_path": "/local_nvme" (a folder on a fast local NVMe drive)'))  # fmt: skip
        if what == "param" and device in ("cpu", "nvme") and stage is not None and stage != 3:
            out.append(error(file, f"{p}offload_param.device", block.get("device"),
                             f"parameter offload needs ZeRO-3; with stage {stage} DeepSpeed keeps the parameters on the GPU",
                             'use "stage": 3, or remove offload_param'))  # fmt: skip
        if what == "optimizer" and device in ("cpu", "nvme") and stage == 0:
            out.append(error(file, f"{p}offload_optimizer.device", block.get("device"),
                             "optimizer offload needs ZeRO stage 1, 2 or 3; with stage 0 it does nothing",
                             'use "stage": 2 (or 3), or remove offload_optimizer'))  # fmt: skip
        ratio = block.get("ratio")
        if what == "optimizer" and isinstance(ratio, (int, float)) and ratio < 1 and stage != 3:
            out.append(error(file, f"{p}offload_optimizer.ratio", ratio,
                             "partial optimizer offload (ratio < 1) is only supported with ZeRO-3; DeepSpeed asserts",
                             'use "stage": 3, or remove ratio'))  # fmt: skip
    if truth(zero.get("compute_grad_norm")) is False and stage not in (1, 2):
        out.append(error(file, p + "compute_grad_norm", zero["compute_grad_norm"],
                         "compute_grad_norm false is supported only with ZeRO stage 1 or 2 (DeepSpeed raises)",
                         "remove compute_grad_norm, or use stage 1 or 2"))  # fmt: skip
    if stage is not None and stage != 3:
        for key in ("stage3_gather_16bit_weights_on_model_save", "gather_16bit_weights_on_model_save"):
            if truth(zero.get(key)):
                out.append(error(file, p + key, zero[key],
                                   f"only applies to ZeRO-3; with stage {stage} the weights are not sharded and it is ignored",
                                   "remove it"))  # fmt: skip
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
            return [error(file, "train_batch_size", tbs,
                          f"train_batch_size {tbs} cannot be split over gradient_accumulation_steps x processes = "
                          f"{gas} x {world} = {gas * world} (a micro-batch of {tbs / (gas * world):g} per process); "
                          "DeepSpeed asserts",
                          f'set "train_batch_size": "auto", or a multiple of {gas * world}')]  # fmt: skip
        return []
    if tbs is None or micro is None or gas is None:
        return []
    if world is not None and tbs != micro * gas * world:
        return [error(file, "train_batch_size", tbs,
                      f"train_batch_size must equal train_micro_batch_size_per_gpu x gradient_accumulation_steps x "
                      f"processes = {micro} x {gas} x {world} = {micro * gas * world}; DeepSpeed asserts",
                      f'set "train_batch_size": {micro * gas * world}, or "auto"')]  # fmt: skip
    if world is None and (micro * gas == 0 or tbs % (micro * gas) != 0):
        return [error(file, "train_batch_size", tbs,
                      f"train_batch_size is not a multiple of train_micro_batch_size_per_gpu x "
                      f"gradient_accumulation_steps = {micro * gas}, so no number of processes fits",
                      'set "train_batch_size": "auto" (filled from the other two and the world size)')]  # fmt: skip
    return []
