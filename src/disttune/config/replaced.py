"""What a DeepSpeed JSON's ``optimizer`` and ``scheduler`` blocks replace of the training script's arguments.

HF Trainer (transformers 5, ``integrations/deepspeed.py``; TRL's trainers are HF Trainers): with an
``optimizer`` block it creates no optimizer of its own, so ``--optim`` is not used (DeepSpeed builds the
block's ``type``); with a ``scheduler`` block it creates no schedule, so ``--lr_scheduler_type`` is not used.
A param that says ``"auto"`` is filled from the script's arguments; an explicit one is compared with them
(with their defaults when not given: derived, ``trainer_matches``) and the Trainer stops on a mismatch
('Please correct the following DeepSpeed config values that mismatch TrainingArguments'). A block without
``params.lr`` leaves ``--learning_rate`` unused: DeepSpeed builds the optimizer with its own default.

With the script's arguments (``disttune check CONFIG -- ARGS``) a conflict is an error; what cannot be
compared (a flag not given, whose default only the script knows) and, without arguments, what the blocks
replace, are warnings.
"""

from __future__ import annotations

from disttune.config.derived import ACCELERATE
from disttune.config.findings import Finding, error, warning
from disttune.config.script_args import ScriptArgs

# DeepSpeed key -> the script flags HF Trainer compares it with ("get_warmup_steps" reads --warmup_steps).
_MATCHES = {
    key: tuple("warmup_steps" if name == "get_warmup_steps" else name for name in names)
    for key, names in ACCELERATE["trainer_matches"].items()
    if key.startswith(("optimizer.params.", "scheduler.params."))
}
_REPLACED_FLAG = {"optimizer": "optim", "scheduler": "lr_scheduler_type"}
_TOTAL = "scheduler.params.total_num_steps"


def _wanted(flags: tuple[str, ...], args: ScriptArgs | None) -> object:
    """The value the Trainer would compare with, from the given flags; None when one is not given."""
    values = [getattr(args, f) if args is not None else None for f in flags]
    if not flags or any(v is None for v in values):
        return None
    if flags == ("max_steps",) and values[0] <= 0:  # -1: the number of epochs decides
        return None
    if flags == ("warmup_steps",):
        steps = values[0]
        return max(1, int(steps)) if steps >= 1 and float(steps).is_integer() else None
    return values if len(values) > 1 else values[0]


def _equal(ds_value: object, wanted: object) -> bool:
    if isinstance(wanted, list):
        return (
            isinstance(ds_value, list) and len(ds_value) == len(wanted) and all(map(_equal, ds_value, wanted))
        )
    try:
        return float(ds_value) == float(wanted)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _param(block: str, name: str, value: object, flags, args: ScriptArgs | None, file: str):
    """(a conflict finding or None, ("name value", the flags to match) when it cannot be compared, or None)."""
    key = f"{block}.params.{name}"
    shown = " / ".join(f"--{f}" for f in flags)
    if key == _TOTAL:  # compared with the Trainer's number of training steps: --max_steps when given
        flags, shown = ("max_steps",), "the run's number of optimizer steps (--max_steps)"
    wanted = _wanted(flags, args)
    if wanted is None:
        return None, (f"{name} {value!r}", shown)
    if _equal(value, wanted):
        return None, None
    given = " ".join(args.shown(f) for f in flags)
    return (
        error(
            file,
            key,
            value,
            f"the config says {value!r} but the script is given {given}: HF Trainer stops ('DeepSpeed config "
            "values that mismatch TrainingArguments')",
            f'write "auto" (the script\'s value is filled in), or drop {given}',
        ),
        None,
    )


def _block(data: dict, block: str, args: ScriptArgs | None, file: str) -> list[Finding]:
    spec = data.get(block)
    if not isinstance(spec, dict):
        return []
    params = spec.get("params") if isinstance(spec.get("params"), dict) else {}
    kind = spec.get("type", "(no type)")
    flag = _REPLACED_FLAG[block]
    out: list[Finding] = []
    notes = [f"it replaces the script's --{flag} (DeepSpeed builds {kind})"]
    if args is not None and getattr(args, flag) is not None:
        out.append(
            error(
                file,
                block,
                kind,
                f"the script is given {args.shown(flag)}, which HF Trainer does not use: this {block} block "
                f"replaces it (DeepSpeed builds {kind})",
                f"drop {args.shown(flag)}, or remove the {block} block to let the script's value apply",
            )
        )
        notes = []
    if block == "optimizer" and "lr" not in params:
        lost = "--learning_rate is not used either: DeepSpeed builds it with its own default lr"
        if args is not None and args.learning_rate is not None:
            out.append(
                error(
                    file,
                    "optimizer.params.lr",
                    None,
                    f"no lr in the optimizer block: {lost}",
                    'add "lr": "auto"',
                )
            )
        else:
            notes.append(f"it has no lr, so {lost}")
    unchecked = []
    for name, value in params.items():
        flags = _MATCHES.get(f"{block}.params.{name}")
        if flags is None or value == "auto":
            continue
        conflict, pair = _param(block, name, value, flags, args, file)
        out += [conflict] if conflict else []
        unchecked += [pair] if pair else []
    if unchecked:
        notes.append(
            f"its explicit {', '.join(v for v, _ in unchecked)} must equal {', '.join(f for _, f in unchecked)}, "
            'or the Trainer stops at launch ("auto" takes the script\'s value)'
        )
    if notes:
        message = f"under HF Trainer (the disttune script, TRL), this {block} block: " + "; ".join(notes)
        fix = f'write "auto" for its params (filled from the script), or remove the block so that --{flag} applies'
        out.append(warning(file, block, kind, message, fix))
    return out


def check_replaced(data: dict, file: str, args: ScriptArgs | None) -> list[Finding]:
    """What the JSON's optimizer / scheduler blocks replace of the script's arguments; errors for conflicts."""
    return _block(data, "optimizer", args, file) + _block(data, "scheduler", args, file)
