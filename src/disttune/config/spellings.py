"""Deprecated and aliased DeepSpeed keys: what DeepSpeed does with each spelling, and what accelerate does.

Derived (``derived.py``): which fields DeepSpeed marks deprecated, the ``new_param`` it maps each to (and
whether it still does), and each field's alias. DeepSpeed's ``DeepSpeedConfigModel`` maps a deprecated key
to its successor, asserts when both are given, and pydantic refuses a field given under both its name and
its alias ('Extra inputs are not permitted').

Ours: the release that deprecated each key, and what happens under accelerate and HF Trainer, which read
the DeepSpeed JSON themselves, by the new names only (a test checks that their sources never name the old
ones): they decide from ``zero_optimization.offload_optimizer.device`` whether to hand DeepSpeed a CPU
optimizer, and they fill ``"auto"`` in under one spelling of each aliased key.
"""

from __future__ import annotations

from collections.abc import Callable

from disttune.config.derived import AUTO_FILLED, DEEPSPEED, DEEPSPEED_VERSION, INFERENCE, section_fields
from disttune.config.findings import ERROR, WARNING, Finding, error, warning
from disttune.config.zero import truth

_DS = f"DeepSpeed {DEEPSPEED_VERSION}"


def _cpu_offload(data: dict, value: object) -> tuple[str, str]:
    if not truth(value):
        return WARNING, "under accelerate it does nothing either (false maps to no offload)"
    if "optimizer" in data:
        return (
            WARNING,
            "under accelerate it works too: DeepSpeed builds the optimizer from the optimizer block",
        )
    if data.get("zero_force_ds_cpu_optimizer") is False:
        return (
            WARNING,
            "under accelerate it works (zero_force_ds_cpu_optimizer is false), with a slow torch optimizer",
        )
    return ERROR, (
        "under accelerate / HF Trainer the launch fails: they read only offload_optimizer.device, see no offload, "
        "and hand DeepSpeed a torch optimizer, which DeepSpeed refuses at optimizer creation ('ZeRO-Offload with "
        "a client provided optimizer')"
    )


def _works(what: str) -> Callable[[dict, object], tuple[str, str]]:
    return lambda data, value: (WARNING, f"under accelerate it works too ({what})")


# Ours, per deprecated key: the release that deprecated it, and what accelerate / HF Trainer do with it.
DEPRECATED = {
    "zero_optimization.stage3_gather_fp16_weights_on_model_save": (
        "DeepSpeed 0.6.0 (PR #1453)",
        _works("accelerate saves through DeepSpeed's own reading of the flag"),
    ),
    "zero_optimization.cpu_offload": ("DeepSpeed 0.3.15 (ZeRO-Infinity)", _cpu_offload),
    "zero_optimization.cpu_offload_param": (
        "DeepSpeed 0.3.15 (ZeRO-Infinity)",
        _works(
            "DeepSpeed offloads the parameters itself; accelerate reads offload_param only for a log line"
        ),
    ),
    "zero_optimization.cpu_offload_use_pin_memory": ("DeepSpeed 0.3.15 (ZeRO-Infinity)", None),
}


def _deprecated(
    path: str, name: str, spec: dict, block: dict, data: dict, file: str, under_accelerate: bool
) -> Finding:
    """One deprecated key: dropped (error), given with its successor (error), or mapped (and under accelerate?)."""
    dotted, new = f"{_shown(path)}{name}", spec["new_param"]
    since, under = DEPRECATED.get(f"{path}.{name}", ("", None))
    value = block[name]
    head = f"{name!r} is deprecated" + (f" since {since}" if since else f" in {_DS}")
    if not new or not spec["set_new_param"]:
        instead = f"set {new} instead" if new else "remove it"
        why = spec["message"] or f"{_DS} no longer reads it, so the setting has no effect"
        severity = warning if not new and spec["message"] else error  # "no longer needed": nothing is lost
        return severity(file, dotted, value, f"{head}: {why}", instead)
    alias = _alias(path, new)
    if _given(path, block, new):
        return error(
            file,
            dotted,
            value,
            f"{head}, and {new!r} is given too: {_DS} stops ('Cannot provide deprecated parameter "
            f"'{name}' and replacing parameter '{new}' together')",
            f"remove {name}",
        )
    severity, said = under(data, value) if under else (WARNING, "accelerate reads neither name")
    also = f" (also spelled {alias!r})" if alias else ""
    message = f"{head}; {_DS} still maps it to {new!r}{also}; {said}"
    if severity == ERROR and not under_accelerate:  # a file given alone: it runs under DeepSpeed alone
        severity = WARNING
    return (error if severity == ERROR else warning)(
        file, dotted, value, message, f"use {alias or new} instead"
    )


def _alias(path: str, name: str) -> str:
    return section_fields(path).get(name, {}).get("alias", "") if "." not in name else ""


def _given(path: str, block: dict, new: str) -> bool:
    """Whether the successor ``new`` (``offload_param``, ``tensor_parallel.tp_size``) is given, by any spelling."""
    *parents, last = new.split(".")
    for part in parents:
        block = block.get(part) if isinstance(block.get(part), dict) else {}
    return last in block or (not parents and bool(_alias(path, last)) and _alias(path, last) in block)


def _shown(path: str) -> str:
    """The dotted prefix of a section's keys as the file writes them (the inference model's root has none)."""
    path = path.removeprefix(INFERENCE).lstrip(".")
    return f"{path}." if path else ""


def _aliases(path: str, block: dict, file: str) -> list[Finding]:
    """A field given under both its name and its alias; "auto" under the spelling accelerate does not fill."""
    out: list[Finding] = []
    for name, spec in section_fields(path).items():
        alias = spec.get("alias")
        if not alias or alias == name:
            continue
        if name in block and alias in block:
            out.append(
                error(
                    file,
                    f"{_shown(path)}{name}",
                    block[name],
                    f"given twice, as {name!r} and as its alias {alias!r}: {_DS} reads {alias!r} and refuses "
                    f"{name!r} ('Extra inputs are not permitted')",
                    f"keep only one of {name} and {alias}",
                )
            )
            continue
        for used, other in ((name, alias), (alias, name)):
            filled = f"{path}.{other}" in AUTO_FILLED and f"{path}.{used}" not in AUTO_FILLED
            if block.get(used) == "auto" and filled:
                out.append(
                    error(
                        file,
                        f"{_shown(path)}{used}",
                        "auto",
                        f"accelerate and HF Trainer fill 'auto' in only under the name {other!r}: under accelerate "
                        f"the launch stops ('{path}.{used}' not found in kwargs); DeepSpeed alone drops it and "
                        "uses its default",
                        f"rename it to {other}",
                    )
                )
    return out


def _block(data: dict, path: str) -> dict | None:
    path = path.removeprefix(INFERENCE).lstrip(".")
    for part in path.split(".") if path else ():
        data = data.get(part) if isinstance(data, dict) else None
    return data if isinstance(data, dict) else None


def check_spellings(data: dict, file: str, root: str = "", under_accelerate: bool = True) -> list[Finding]:
    """Deprecated keys (under DeepSpeed and under accelerate) and aliased keys, in every section DeepSpeed models.

    ``root``: ``INFERENCE`` for a ``deepspeed.init_inference`` config (its model's sections), else a training
    config's sections. ``under_accelerate``: an accelerate config points to the file, so what fails only under
    accelerate is an error; for a file given alone it is a warning that says so.
    """
    out: list[Finding] = []
    for path in (p for p in DEEPSPEED["sections"] if p.startswith(INFERENCE) == bool(root)):
        block = _block(data, path)
        if block is None:
            continue
        out += [
            _deprecated(path, name, spec["deprecated"], block, data, file, under_accelerate)
            for name, spec in section_fields(path).items()
            if "deprecated" in spec and name in block
        ]
        out += _aliases(path, block, file)
    return out
