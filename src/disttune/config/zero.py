"""The ZeRO settings of a config as one typed view, whichever file they are written in, and their rules.

The same facts can be written in an accelerate YAML (``deepspeed_config.zero_stage``,
``offload_param_device``, ...) or in a DeepSpeed JSON (``zero_optimization.stage``, ``offload_param.device``,
...). Each file is turned into a ``Zero`` once; ``rule_zero`` holds each rule once, and every finding names
the key as it is written in that file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from disttune.config.findings import Finding, error
from disttune.config.schema import FALSE_STRINGS, TRUE_STRINGS


def truth(value: object) -> bool | None:
    """accelerate's / DeepSpeed's reading of a boolean-ish value (``str_to_bool`` on ``str(value).lower()``)."""
    if value is None:
        return None
    text = str(value).lower()
    return True if text in TRUE_STRINGS else False if text in FALSE_STRINGS else None


def as_int(value: object) -> int | None:
    """``value`` as an int when it is one (or a whole number / digit string), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def concrete_int(value: object) -> int | None:
    """An int that is really written down (not ``"auto"``, not missing)."""
    return None if value == "auto" else as_int(value)


@dataclass(frozen=True)
class Offload:
    """Where one kind of state is offloaded: the device (lower case), its value and key, and the NVMe path key."""

    device: str
    value: object
    key: str
    nvme_path: object
    nvme_key: str


@dataclass(frozen=True)
class Zero:
    """ZeRO settings as written in one file.

    Attributes:
        file: the file they are written in.
        stage: the ZeRO stage (``None`` when unknown, e.g. ``"auto"``).
        stage_key: the stage's key in this file (for messages: "with zero_stage 2").
        offload: ``"param"`` / ``"optimizer"`` -> ``Offload`` (only when this file holds the offload settings).
        zero3_only: ``(key, value)`` of each ZeRO-3-only flag set to true in this file.
        stage_fix: how to write stage ``{n}`` in this file.
        no_offload_fix: how to turn one offload off in this file (``{what}`` is param/optimizer).
    """

    file: str
    stage: int | None
    stage_key: str
    offload: dict[str, Offload] = field(default_factory=dict)
    zero3_only: list[tuple[str, object]] = field(default_factory=list)
    stage_fix: str = "zero_stage: {n}"
    no_offload_fix: str = "set offload_{what}_device: none"


def zero_from_yaml(file: str, ds: dict, json_stage: int | None, has_file: bool, refused: tuple = ()) -> Zero:
    """The view of an accelerate ``deepspeed_config`` section.

    With a ``deepspeed_config_file``, the stage and the offload settings live in the JSON (``json_stage``);
    keys that accelerate refuses next to the file (``refused``) are reported elsewhere, not here.
    """
    p = "deepspeed_config."
    offload = {}
    if not has_file:
        for what in ("param", "optimizer"):
            value = ds.get(f"offload_{what}_device")
            offload[what] = Offload(
                str(value or "none").lower(),
                value,
                p + f"offload_{what}_device",
                ds.get(f"offload_{what}_nvme_path"),
                p + f"offload_{what}_nvme_path",
            )
    flags = [
        (p + k, ds[k])
        for k in ("zero3_init_flag", "zero3_save_16bit_model")
        if truth(ds.get(k)) and k not in refused
    ]
    stage = (
        json_stage if has_file else as_int(ds.get("zero_stage", 2))
    )  # DeepSpeedPlugin's default stage is 2
    return Zero(file, stage, p + "zero_stage" if not has_file else "zero_optimization.stage", offload, flags)


def zero_from_json(file: str, zero: dict) -> Zero:
    """The view of a DeepSpeed JSON ``zero_optimization`` section."""
    p = "zero_optimization."
    offload = {}
    # the deprecated booleans DeepSpeed still maps to a CPU offload block (spellings.py)
    deprecated = {"param": "cpu_offload_param", "optimizer": "cpu_offload"}
    for what in ("param", "optimizer"):
        block = zero.get(f"offload_{what}")
        if isinstance(block, dict):
            offload[what] = Offload(
                str(block.get("device") or "none").lower(),
                block.get("device"),
                f"{p}offload_{what}.device",
                block.get("nvme_path"),
                f"{p}offload_{what}.nvme_path",
            )
        elif truth(zero.get(deprecated[what])):
            key = p + deprecated[what]
            offload[what] = Offload("cpu", zero[deprecated[what]], key, None, key)
    flags = [
        (p + k, zero[k])
        for k in ("stage3_gather_16bit_weights_on_model_save", "gather_16bit_weights_on_model_save")
        if truth(zero.get(k))
    ]
    return Zero(
        file,
        concrete_int(zero.get("stage", 0)),
        p + "stage",
        offload,
        flags,
        stage_fix='"stage": {n}',
        no_offload_fix="remove offload_{what}",
    )


def rule_zero(z: Zero) -> list[Finding]:
    """Offload vs stage, NVMe paths, ZeRO-3-only flags: DeepSpeed 0.19.8 silently ignores each of them."""
    out: list[Finding] = []
    stage_name = z.stage_key.rsplit(".", 1)[-1]
    param, optim = z.offload.get("param"), z.offload.get("optimizer")
    if param and param.device in ("cpu", "nvme") and z.stage is not None and z.stage != 3:
        out.append(
            error(
                z.file,
                param.key,
                param.value,
                f"parameter offload needs ZeRO-3; with {stage_name} {z.stage} DeepSpeed keeps the parameters "
                "on the GPU",
                f"use {z.stage_fix.format(n=3)}, or {z.no_offload_fix.format(what='param')}",
            )
        )
    if optim and optim.device in ("cpu", "nvme") and z.stage == 0:
        out.append(
            error(
                z.file,
                optim.key,
                optim.value,
                f"optimizer offload needs ZeRO stage 1, 2 or 3; with {stage_name} 0 it does nothing",
                f"use {z.stage_fix.format(n=2)} (or 3), or {z.no_offload_fix.format(what='optimizer')}",
            )
        )
    for offload in z.offload.values():
        if offload.device == "nvme" and not offload.nvme_path:
            short = (
                offload.key.rsplit(".", 1)[-1] if "_device" in offload.key else offload.key.split(".", 1)[-1]
            )
            nvme = (
                offload.nvme_key.rsplit(".", 1)[-1]
                if "_device" in offload.key
                else offload.nvme_key.split(".", 1)[-1]
            )
            out.append(
                error(
                    z.file,
                    offload.nvme_key,
                    None,
                    f"{short} is nvme but {nvme} is missing (DeepSpeed would get no folder to offload to)",
                    f"set {nvme} to a folder on a fast local NVMe drive, e.g. /local_nvme",
                )
            )
    if z.stage is not None and z.stage != 3:
        for key, value in z.zero3_only:
            out.append(
                error(
                    z.file,
                    key,
                    value,
                    f"only applies to ZeRO-3; with ZeRO stage {z.stage} it is ignored",
                    f"remove it, or use {z.stage_fix.format(n=3)}",
                )
            )
    return out
