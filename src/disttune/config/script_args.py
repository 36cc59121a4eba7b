"""Training-script arguments (after ``--``) against the same settings in the config.

Under DeepSpeed, HF Trainer / TRL compare the DeepSpeed config with their TrainingArguments and stop with
"Please correct the following DeepSpeed config values that mismatch TrainingArguments" when both give a
value and they differ. A config value without a script value is fine (the training script adopts it).
"""

from __future__ import annotations

from dataclasses import dataclass

from disttune.config.findings import Finding, error, warning
from disttune.config.schema import FALSE_STRINGS, TRUE_STRINGS

_INT_FLAGS = ("gradient_accumulation_steps", "per_device_train_batch_size")
_FLOAT_FLAGS = ("max_grad_norm",)
_BOOL_FLAGS = ("bf16", "fp16")


@dataclass(frozen=True)
class ScriptArgs:
    """The settings found in the script's arguments (``None`` when not given); ``raw`` keeps the flag text."""

    gradient_accumulation_steps: int | None = None
    per_device_train_batch_size: int | None = None
    max_grad_norm: float | None = None
    mixed_precision: str | None = None
    raw: dict | None = None


def parse_script_args(argv: list[str] | None) -> ScriptArgs:
    """Read the few flags that can collide with the config, leniently.

    Accepts ``--flag value``, ``--flag=value``, dashes or underscores, and bare ``--bf16`` / ``--fp16``
    (optionally followed by true/false). Everything else is skipped.
    """
    found: dict = {}
    raw: dict = {}
    argv = list(argv or [])
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if not token.startswith("--"):
            continue
        name, eq, value = token[2:].partition("=")
        name = name.replace("-", "_")
        if name not in _INT_FLAGS + _FLOAT_FLAGS + _BOOL_FLAGS + ("mixed_precision",):
            continue
        shown = token
        if not eq:
            nxt = argv[i] if i < len(argv) else None
            takes = nxt is not None and not nxt.startswith("--")
            if name in _BOOL_FLAGS:
                takes = takes and nxt.lower() in TRUE_STRINGS + FALSE_STRINGS
            if takes:
                value, i, shown = nxt, i + 1, f"{token} {nxt}"
            elif name in _BOOL_FLAGS:
                value = "true"
            else:
                continue
        raw[name] = shown
        try:
            if name in _INT_FLAGS:
                found[name] = int(value)
            elif name in _FLOAT_FLAGS:
                found[name] = float(value)
            elif name == "mixed_precision":
                found["mixed_precision"] = value.lower()
            elif value.lower() in TRUE_STRINGS and "mixed_precision" not in found:
                found["mixed_precision"] = name
                raw["mixed_precision"] = raw[name]
        except ValueError:
            continue
    return ScriptArgs(**found, raw=raw)


@dataclass(frozen=True)
class Setting:
    """A value the config pins, and where: (value, file, dotted key)."""

    value: object
    file: str
    key: str


def _same(a: object, b: object) -> bool:
    try:
        return float(a) == float(b)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(a).lower() == str(b).lower()


def check_script_args(
    args: ScriptArgs, settings: dict[str, Setting], deepspeed: bool
) -> list[Finding]:
    """Findings for each setting given both in the config and on the script's command line, differently.

    ``settings`` maps ``gradient_accumulation_steps`` / ``max_grad_norm`` / ``mixed_precision`` /
    ``per_device_train_batch_size`` to the config's concrete value.
    """
    out: list[Finding] = []
    raw = args.raw or {}
    for name, setting in settings.items():
        given = getattr(args, name)
        if given is None or setting.value is None or _same(given, setting.value):
            continue
        flag = raw.get(name, f"--{name} {given}")
        if deepspeed:
            out.append(error(setting.file, setting.key, setting.value,
                             f"the config says {setting.value} but the script is given {flag}: HF Trainer / TRL stop with "
                             "'DeepSpeed config values that mismatch TrainingArguments'",
                             f"drop {flag} (the script adopts the config's value), or set {setting.key} "
                             f"to {given} (or \"auto\" in a DeepSpeed JSON)"))  # fmt: skip
        else:
            out.append(warning(setting.file, setting.key, setting.value,
                               f"the config says {setting.value} but the script is given {flag}; the script's "
                               "value wins and the config's is ignored",
                               f"drop {flag}, or set {setting.key} to {given}"))  # fmt: skip
    return out
