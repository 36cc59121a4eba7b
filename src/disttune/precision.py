"""Mixed precision, in one place: the values, the script's flags, and the rule that joins them.

One source of precision for a run: the accelerate config's ``mixed_precision`` (or ``--mixed_precision`` on the
launch line), which ``accelerate launch`` exports as ``ACCELERATE_MIXED_PRECISION``, unless a DeepSpeed JSON
pins ``bf16.enabled`` / ``fp16.enabled`` (``train/reconcile.launch_precision``). The training script's
``--bf16``/``--fp16`` (transformers' flags) may only agree with it (``disagreeing``): the script refuses a
flag that does not at run time (``train/reconcile.py``), and ``disttune check -- ARGS`` says so before the
launch (``config/script_args.py``). Standard library only.
"""

from __future__ import annotations

import argparse

MIXED_PRECISIONS = (
    "no",
    "fp16",
    "bf16",
    "fp8",
)  # accelerate's PrecisionType (config/data is derived from it)
ESTIMATED_PRECISIONS = ("no", "fp16", "bf16")  # what `disttune estimate` and `bench` model
HALF_PRECISIONS = ("fp16", "bf16")
SCRIPT_FLAGS = ("bf16", "fp16")  # TrainingArguments' precision flags
_TRUE, _FALSE = ("yes", "true", "t", "y", "1"), ("no", "false", "f", "n", "0")  # transformers' string_to_bool


def weight_bytes(mixed_precision: str) -> int:
    """Bytes of one 16-bit-or-not working value: 2 in fp16/bf16, else 4 (fp32)."""
    return 2 if mixed_precision in HALF_PRECISIONS else 4


def to_bool(value) -> bool:
    """A flag's value as transformers reads it (``--bf16``, ``--bf16 false``, ``--bf16=True``); ValueError
    for anything else."""
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in _TRUE + _FALSE:
        return text in _TRUE
    raise ValueError(f"--bf16/--fp16 take true or false, not {value!r}.")


def split_precision_flags(argv: list[str], recipe: dict | None = None) -> tuple[list[str], dict[str, bool]]:
    """The user's ``--bf16``/``--fp16`` values (recipe, then command line) and ``argv`` without them. A flag
    alone means true, as in transformers' own parser for a boolean that defaults to false."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in SCRIPT_FLAGS:
        parser.add_argument(f"--{flag}", nargs="?", const=True, default=None)
    given, rest = parser.parse_known_args(argv)
    recipe = recipe or {}
    values = {flag: to_bool(recipe[flag]) for flag in SCRIPT_FLAGS if recipe.get(flag) is not None}
    values.update({flag: to_bool(v) for flag, v in vars(given).items() if v is not None})
    return rest, values


def disagreeing(flags: dict[str, bool], precision: str) -> list[tuple[str, bool]]:
    """The precision rule: the ``(flag, value)`` pairs that contradict ``precision`` (``--bf16`` under
    ``fp16``, ``--bf16 false`` under ``bf16``, ...)."""
    return [(flag, value) for flag, value in flags.items() if value != (str(precision).lower() == flag)]


def shown(flag: str, value: bool) -> str:
    """How a flag reads on a command line: ``--bf16`` or ``--bf16 false``."""
    return f"--{flag}" if value else f"--{flag} false"


def wanted(flags: dict[str, bool]) -> str:
    """The precision the flags ask for: ``bf16``, ``fp16`` or ``no``."""
    return "bf16" if flags.get("bf16") else "fp16" if flags.get("fp16") else "no"
