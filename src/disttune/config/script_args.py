"""Training-script arguments (after ``--``) against the same settings in the config.

``ScriptArgs`` holds the flags every check compares (batch, accumulation, clipping, precision, and the
optimizer and schedule flags that a DeepSpeed ``optimizer`` / ``scheduler`` block replaces: replaced.py), as
the training script's own parser read them (``train.args.compared_flags``: the caller parses, so this floor
never imports the training script).

Under DeepSpeed, HF Trainer / TRL compare the DeepSpeed config with their TrainingArguments and stop with
"Please correct the following DeepSpeed config values that mismatch TrainingArguments" when both give a
value and they differ. A config value without a script value is fine (the training script adopts it).

Precision has one source, the config: ``mixed_precision`` (or, with a ``deepspeed_config_file``, the JSON's
``bf16.enabled`` / ``fp16.enabled`` when they are not "auto"). The training script takes it from there and
stops on an explicit ``--bf16`` / ``--fp16`` that disagrees; ``check`` reports the same conflict first.
"""

from __future__ import annotations

from dataclasses import dataclass

from disttune.config.findings import Finding, error
from disttune.precision import SCRIPT_FLAGS, disagreeing, shown
from disttune.precision import wanted as precision_wanted

# The flags compared with a config (besides --bf16 / --fp16): ScriptArgs' fields.
COMPARED = ("gradient_accumulation_steps", "per_device_train_batch_size", "max_steps", "max_grad_norm")
COMPARED += ("learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon")
COMPARED += ("warmup_steps",)  # transformers 5: a whole number of steps, or a fraction (< 1) of them
COMPARED += ("lr_scheduler_type", "optim")


@dataclass(frozen=True)
class ScriptArgs:
    """The settings found in the script's arguments (``None`` when not given); ``raw`` keeps the flag text."""

    gradient_accumulation_steps: int | None = None
    per_device_train_batch_size: int | None = None
    max_steps: int | None = None
    max_grad_norm: float | None = None
    learning_rate: float | None = None
    weight_decay: float | None = None
    adam_beta1: float | None = None
    adam_beta2: float | None = None
    adam_epsilon: float | None = None
    warmup_steps: float | None = None
    lr_scheduler_type: str | None = None
    optim: str | None = None
    bf16: bool | None = None
    fp16: bool | None = None
    raw: dict | None = None
    problem: str | None = None  # what the script's own parser said of arguments it refuses

    def shown(self, name: str) -> str:
        """The flag as the user wrote it (``--learning_rate 1e-4``)."""
        return (self.raw or {}).get(name, f"--{name} {getattr(self, name)}")


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


def check_script_args(args: ScriptArgs, settings: dict[str, Setting]) -> list[Finding]:
    """Under DeepSpeed: an error for each setting the config and the script's command line both give, differently.

    ``settings`` maps ``gradient_accumulation_steps`` / ``max_grad_norm`` / ``per_device_train_batch_size`` to
    the DeepSpeed config's concrete value.
    """
    out: list[Finding] = []
    raw = args.raw or {}
    for name, setting in settings.items():
        given = getattr(args, name)
        if given is None or setting.value is None or _same(given, setting.value):
            continue
        flag = raw.get(name, f"--{name} {given}")
        out.append(
            error(
                setting.file,
                setting.key,
                setting.value,
                f"the config says {setting.value} but the script is given {flag}: HF Trainer / TRL stop with "
                "'DeepSpeed config values that mismatch TrainingArguments'",
                f"drop {flag} (the script adopts the config's value), or set {setting.key} "
                f'to {given} (or "auto" in a DeepSpeed JSON)',
            )
        )
    return out


def check_precision_args(args: ScriptArgs, sources: list[Setting]) -> list[Finding]:
    """An error for each explicit ``--bf16`` / ``--fp16`` that disagrees with a precision the config pins.

    ``sources``: the precisions the config pins (``"no"``, ``"fp16"``, ``"bf16"``), each with its file and
    key: the YAML's ``mixed_precision``, and the DeepSpeed JSON's ``bf16.enabled`` / ``fp16.enabled``.
    """
    out: list[Finding] = []
    raw = args.raw or {}
    flags = {name: getattr(args, name) for name in SCRIPT_FLAGS if getattr(args, name) is not None}
    wanted = precision_wanted(flags)
    for source in sources:
        precision = str(source.value).lower()
        for flag_name, value in disagreeing(flags, precision):
            flag = raw.get(flag_name, shown(flag_name, value))
            if source.key == "mixed_precision":
                fix_config = f"set mixed_precision: {wanted} in the config"
            else:
                fix_config = (
                    f"set {wanted if wanted != 'no' else flag_name}.enabled to "
                    f'{"true" if wanted != "no" else "false"} (or "auto") in {source.file}'
                )
            out.append(
                error(
                    source.file,
                    source.key,
                    source.value,
                    f"the config sets the precision to {precision} ({source.file}: {source.key}) but the "
                    f"script is given {flag}: the training script takes the precision from the config and "
                    "stops on an explicit flag that disagrees",
                    f"drop {flag} (the script takes the precision from the config), or {fix_config}",
                )
            )
    return out
