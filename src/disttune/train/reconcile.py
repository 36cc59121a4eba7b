"""One source of truth for batch and precision settings before the trainer starts.

``accelerate launch`` exports the config's ``deepspeed_config.gradient_accumulation_steps`` and
``gradient_clipping`` as environment variables; HF's Trainer then refuses to start when the script's
own values differ ("DeepSpeed config values that mismatch TrainingArguments"). Here the config's value
applies when the user passed none, and an explicit conflicting value stops with a short message.
"""

from __future__ import annotations

import os
from pathlib import Path

from disttune.errors import UserError

GA_ENV = "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"
CLIP_ENV = "ACCELERATE_GRADIENT_CLIPPING"
MP_ENV = "ACCELERATE_MIXED_PRECISION"


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


def reconcile_batch_settings(args, explicit: set[str], environ=os.environ, config_name: str | None = None) -> list[str]:
    """Adopt the accelerate config's accumulation/clipping unless the user set their own; refuse conflicts.

    ``args`` is the ``SFTConfig``; ``explicit`` the argument names the user gave (command line or recipe).
    Returns notes describing what was adopted.
    """
    notes = []
    pairs = (
        ("gradient_accumulation_steps", GA_ENV, "gradient_accumulation_steps", int),
        ("max_grad_norm", CLIP_ENV, "gradient_clipping", float),
    )
    for arg_name, env_name, config_key, cast in pairs:
        raw = environ.get(env_name)
        if raw is None or raw.lower() in ("none", "auto", ""):
            continue
        config_value = cast(float(raw)) if cast is int else cast(raw)
        ours = getattr(args, arg_name)
        if ours == config_value:
            continue
        if arg_name in explicit:
            where = config_name or launcher_config_file()
            raise UserError(
                f"{arg_name} is {ours} on the command line but deepspeed_config.{config_key} is {config_value} "
                f"in {where}.\n  fix: set it in one place only: remove --{arg_name} from the script arguments, "
                f"or remove deepspeed_config.{config_key} from the config (or make both {ours})."
            )
        setattr(args, arg_name, config_value)
        notes.append(f"{arg_name} = {config_value} (from deepspeed_config.{config_key} in the accelerate config)")
    return notes
