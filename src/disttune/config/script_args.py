"""Training-script arguments (after ``--``) against the same settings in the config.

``parse_script_args`` reads the flags every check compares (batch, accumulation, clipping, precision, and
the optimizer and schedule flags that a DeepSpeed ``optimizer`` / ``scheduler`` block replaces: replaced.py).

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

_INT_FLAGS = ("gradient_accumulation_steps", "per_device_train_batch_size", "max_steps")
_FLOAT_FLAGS = ("max_grad_norm", "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon")
_FLOAT_FLAGS += ("warmup_steps",)  # transformers 5: a whole number of steps, or a fraction (< 1) of them
_STR_FLAGS = ("lr_scheduler_type", "optim")


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


def _shown(argv: list[str], name: str, value: object) -> str:
    """The flag as the user wrote it (``--bf16``, ``--bf16 false``, ``--bf16=True``, ``--gradient-accumulation-steps
    4``); a value from the ``--config`` recipe as ``name: value in the --config recipe``."""
    spellings = (f"--{name}", f"--{name.replace('_', '-')}")
    for index in range(len(argv) - 1, -1, -1):
        token = argv[index]
        flag, eq, _ = token.partition("=")
        if flag in spellings:
            if eq:
                return token
            following = argv[index + 1] if index + 1 < len(argv) else None
            return (
                f"{token} {following}" if following is not None and not following.startswith("--") else token
            )
    return f"{name}: {value} in the --config recipe"


def parse_script_args(argv: list[str] | None) -> ScriptArgs:
    """The flags every check compares, as the training script's own parser reads them (``train.args``: the
    same types, spellings and ``--config`` recipe), kept only where the user set them (command line or
    recipe): a default never conflicts with the config. Arguments the script's parser refuses are left to
    it (it reports them when launched): nothing is compared then. Imports TRL (a few seconds), so only when
    script arguments are given."""
    import contextlib
    import io
    import warnings

    from disttune.errors import UserError
    from disttune.precision import split_precision_flags
    from disttune.train.args import explicit_names, parse_args, read_recipe

    argv = list(argv or [])
    said = io.StringIO()
    try:
        # The precision flags as the script reads them (precision.py: a flag alone means true), then the rest.
        rest, flags = split_precision_flags(argv, read_recipe(argv))
        with warnings.catch_warnings(), contextlib.redirect_stderr(said), contextlib.redirect_stdout(said):
            warnings.simplefilter("ignore")
            # as the script parses under a launch: the precision comes from the config, not the flags
            _, training_args, _ = parse_args([*rest, "--bf16", "false", "--fp16", "false"], lenient=True)
        given = explicit_names(rest)
    except (UserError, SystemExit, TypeError, ValueError) as exc:
        lines = [line for line in said.getvalue().splitlines() if "error:" in line] or [str(exc)]
        return ScriptArgs(raw={}, problem=lines[-1].split("error: ", 1)[-1])
    names = _INT_FLAGS + _FLOAT_FLAGS + _STR_FLAGS
    found = {name: _plain(getattr(training_args, name)) for name in names if name in given}
    found.update(flags)
    return ScriptArgs(**found, raw={name: _shown(argv, name, value) for name, value in found.items()})


def _plain(value):
    """An enum value as its string (``SchedulerType.COSINE`` -> ``cosine``), anything else as it is."""
    return getattr(value, "value", value)


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
