"""One source of truth for batch and precision settings before the trainer starts.

``accelerate launch`` exports the config's ``deepspeed_config.gradient_accumulation_steps`` and
``gradient_clipping`` as environment variables, and the precision it resolved (``mixed_precision`` in the
config, or ``--mixed_precision`` on the launch line) as ``ACCELERATE_MIXED_PRECISION``; HF's Trainer then
refuses to start when the script's own values differ ("DeepSpeed config values that mismatch
TrainingArguments", e.g. ``ds bf16.enabled=True vs hf bf16=False``). A ``deepspeed_config_file`` is read
here too: accelerate exports none of its values, and what it pins (not "auto") the Trainer compares as well.
Here the config's value applies when the user passed none, and an explicit conflicting value stops with a
short message naming both places.
"""

from __future__ import annotations

import os
from pathlib import Path

from disttune import precision
from disttune.errors import UserError

GA_ENV = "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"
CLIP_ENV = "ACCELERATE_GRADIENT_CLIPPING"
MP_ENV = "ACCELERATE_MIXED_PRECISION"
DS_ENV, DS_CONFIG_ENV = "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_CONFIG_FILE"


def deepspeed_json(environ=os.environ) -> tuple[str, dict] | None:
    """``(path, mapping)`` of the ``deepspeed_config_file`` this DeepSpeed launch uses (bounded reader), or
    None without one. accelerate exports none of its values; what it pins, the Trainer compares."""
    path = environ.get(DS_CONFIG_ENV)
    if environ.get(DS_ENV, "").lower() != "true" or path in (None, "", "none"):
        return None
    from disttune.config.load import load_mapping

    return path, load_mapping(path, "DeepSpeed config", syntax="json")


def launch_precision(environ=os.environ) -> tuple[str | None, str | None]:
    """The precision the launch resolved, and where it was pinned (None: the config's ``mixed_precision``
    or ``--mixed_precision``, as ``ACCELERATE_MIXED_PRECISION``; None, None: not started by accelerate).

    Under DeepSpeed with a ``deepspeed_config_file`` whose ``bf16.enabled`` / ``fp16.enabled`` is pinned (not
    "auto"), the JSON decides: accelerate refuses ``mixed_precision`` next to such a file, leaves the
    variable at ``no`` and reads the JSON (``AcceleratorState.mixed_precision``), and the Trainer stops on
    ``ds bf16.enabled=True vs hf bf16=False`` unless its flags follow the JSON. The JSON is read with the
    same rule as ``disttune check`` (``config.deepspeed_rules.json_precision``).
    """
    launched = environ.get(MP_ENV)
    found = deepspeed_json(environ) if launched is not None else None
    if found is None:
        return launched, None
    from disttune.config.deepspeed_rules import json_precision

    path, data = found
    pinned, key = json_precision(data)
    return (pinned, f"{path}: {key}") if pinned is not None else (launched, None)


def launcher_config_file() -> str:
    """The ``--config_file`` given to the ``accelerate launch`` that started us, when it can be seen."""
    try:
        argv = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "the accelerate config"
    args = [a.decode(errors="replace") for a in argv]
    for i, arg in enumerate(args):
        if arg == "--config_file" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--config_file="):
            return arg.split("=", 1)[1]
    return "the accelerate config"


def cpu_mixed_precision_fallback(cuda_available: bool, environ=os.environ) -> str | None:
    """fp16 autocast has no CPU kernels worth using: fall back to bf16 with a one-line warning.

    Must run before ``TrainingArguments`` is built (it reads the variable). Returns the warning or None.
    """
    if cuda_available or environ.get(MP_ENV) != "fp16":
        return None
    environ[MP_ENV] = "bf16"
    return "warning: mixed_precision fp16 needs a GPU; no GPU is visible, so this run uses bf16 on the CPU."


def split_precision_flags(argv: list[str], recipe: dict | None = None) -> tuple[list[str], dict[str, bool]]:
    """``precision.split_precision_flags``, with a bad value as a ``UserError``."""
    try:
        return precision.split_precision_flags(argv, recipe)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def reconcile_precision(
    user: dict[str, bool], launched: str | None, config_name: str | None = None, pinned_at: str | None = None
) -> None:
    """Refuse ``--bf16``/``--fp16`` values that contradict the precision accelerate resolved (``launched``).

    ``user`` holds the values the user gave; ``launched`` is the launch's precision (``no``, ``fp16``,
    ``bf16``: ``launch_precision``), or None when the script was not started by accelerate; ``pinned_at``
    names the DeepSpeed JSON key that pinned it, when one did.
    """
    if launched is None:
        return
    for flag, value in precision.disagreeing(user, launched):
        shown = precision.shown(flag, value)
        if pinned_at:
            where, fix = (
                pinned_at,
                f'or set {pinned_at.rsplit(": ", 1)[-1]} there as you want it (or to "auto")',
            )
        else:
            where = f"{config_name or launcher_config_file()} or --mixed_precision on the launch line"
            fix = f"or launch with --mixed_precision {flag if value else 'no'} (or set mixed_precision in the config)"
        raise UserError(
            f"the script is given {shown} but the launch resolved mixed_precision '{launched}' ({where}); "
            f"DeepSpeed and the Trainer would disagree on the precision.\n"
            f"  fix: drop {shown} (the script takes the precision from the launch), {fix}."
        )


def apply_precision(args, launched: str) -> None:
    """Set ``args.bf16``/``args.fp16`` to the precision the launch resolved (after any CPU fallback).

    Done after ``TrainingArguments`` is built, which already took ``mixed_precision`` (and the DeepSpeed
    plugin its ``bf16``/``fp16`` sections) from the same variable; its bf16 check is for GPUs only, and
    on CPU torch's bf16 autocast is what accelerate uses.
    """
    args.bf16, args.fp16 = launched == "bf16", launched == "fp16"


# (argument, DeepSpeed JSON key, the variable accelerate exports for the YAML's deepspeed_config key, type)
BATCH_SETTINGS = (
    ("gradient_accumulation_steps", "gradient_accumulation_steps", GA_ENV, int),
    ("max_grad_norm", "gradient_clipping", CLIP_ENV, float),
    ("per_device_train_batch_size", "train_micro_batch_size_per_gpu", None, int),
)


def _pinned(raw) -> bool:
    return raw is not None and str(raw).lower() not in ("none", "auto", "")


def config_batch_values(
    environ=os.environ, config_name: str | None = None
) -> list[tuple[str, object, str, str]]:
    """``(argument, value, key, file)`` for each batch setting the launch's config pins: the accelerate YAML's
    ``deepspeed_config.gradient_accumulation_steps`` / ``gradient_clipping`` (exported by ``accelerate launch``)
    and, with a ``deepspeed_config_file``, the JSON's ``gradient_accumulation_steps``, ``gradient_clipping`` and
    ``train_micro_batch_size_per_gpu`` (not "auto"): the Trainer stops on any of them that differs from its
    arguments ("DeepSpeed config values that mismatch TrainingArguments")."""
    found = []
    for arg_name, json_key, env_name, cast in BATCH_SETTINGS:
        raw = environ.get(env_name) if env_name else None
        if _pinned(raw):
            value = cast(float(raw)) if cast is int else cast(raw)
            found.append(
                (arg_name, value, f"deepspeed_config.{json_key}", config_name or launcher_config_file())
            )
    found_json = deepspeed_json(environ)
    if found_json is not None:
        path, data = found_json
        for arg_name, json_key, _, cast in BATCH_SETTINGS:
            if _pinned(data.get(json_key)) and all(arg_name != f[0] for f in found):
                found.append((arg_name, cast(data[json_key]), json_key, path))
    return found


def reconcile_batch_settings(
    args, explicit: set[str], environ=os.environ, config_name: str | None = None
) -> list[str]:
    """Adopt the config's accumulation, clipping and (DeepSpeed JSON) micro batch unless the user set their
    own; refuse conflicts. ``args`` is the ``SFTConfig``; ``explicit`` the argument names the user gave
    (command line or recipe). Returns notes describing what was adopted."""
    notes = []
    for arg_name, config_value, key, file in config_batch_values(environ, config_name):
        ours = getattr(args, arg_name)
        if ours == config_value:
            continue
        if arg_name in explicit:
            raise UserError(
                f"{arg_name} is {ours} on the command line but {key} is {config_value} in {file}.\n"
                f"  fix: set it in one place only: remove --{arg_name} from the script arguments, or remove "
                f"{key} from {file} (or make both {ours})."
            )
        setattr(args, arg_name, config_value)
        notes.append(f"{arg_name} = {config_value} (from {key} in {file})")
    return notes


def set_accumulation(args, steps: int, environ=os.environ) -> None:
    """Set gradient accumulation everywhere it is read: the ``SFTConfig``, accelerate's environment and,
    under DeepSpeed, the plugin's config (built from that environment when the arguments were parsed;
    transformers refuses a DeepSpeed config that disagrees with the arguments)."""
    args.gradient_accumulation_steps = steps
    if environ.get(GA_ENV) not in (None, "", "none", "auto"):
        environ[GA_ENV] = str(steps)
    plugin = getattr(args, "deepspeed_plugin", None)
    if plugin is not None:
        plugin.gradient_accumulation_steps = steps
        if isinstance(getattr(plugin, "deepspeed_config", None), dict):
            plugin.deepspeed_config["gradient_accumulation_steps"] = steps
