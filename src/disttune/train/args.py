"""Command-line arguments of the training script, and the one parser that reads them.

The names are TRL's and transformers' own (``SFTConfig`` = ``TrainingArguments`` + SFT options,
``ModelConfig`` for the model and LoRA); ``DisttuneArguments`` adds only what they lack. A recipe file
given with ``--config recipe.yaml`` sets defaults that the command line overrides (TRL's ``TrlParser``).
``make_parser()`` is that parser with the script's defaults (TRL's ``sft.py`` exports the same); the
script, ``disttune check -- ARGS`` and ``disttune launch`` all read the arguments through ``parse_args``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from disttune.errors import UserError

PROG = "07_distributed_training.py"

# The embedded default run: what `07_distributed_training.py` does with no arguments.
SCRIPT_DEFAULTS = {
    "model_name_or_path": "tiny",
    "output_dir": "runs/sft",
    "per_device_train_batch_size": 16,
    "learning_rate": 3e-3,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 5,
    "max_steps": 80,
    "logging_steps": 5,
    "save_strategy": "no",
    "max_length": 128,
    "report_to": "none",
    "seed": 42,
    "weight_decay": 0.0,
    "dataloader_drop_last": True,
    "include_num_input_tokens_seen": True,
    # Precision comes from the accelerate config (mixed_precision), not from TRL's bf16=True default;
    # --bf16 / --fp16 on the command line still win.
    "bf16": False,
    "fp16": False,
    # TRL turns gradient checkpointing on by default; it only costs time on small models.
    "gradient_checkpointing": False,
    # transformers turns this on whenever gradient checkpointing is off: an extra autograd traversal
    # per step that every model here (LoRA included) does not need.
    "ddp_find_unused_parameters": False,
}


@dataclass
class DisttuneArguments:
    """Options the training script adds to TRL's ``SFTConfig`` and ``ModelConfig``."""

    dataset_name: str = field(
        default="builtin",
        metadata={
            "help": "'builtin' (synthetic instructions), a local .jsonl/.json/.parquet/.csv file, or a hub name."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(
        default=None,
        metadata={
            "help": "Evaluation loss on your data set, before and after training (and as --eval_strategy asks): "
            "a split name (hub or folder data sets) or a fraction of the training data held out (e.g. 0.05)."
        },
    )
    heldout_examples: int = field(
        default=64,
        metadata={
            "help": "Held-out examples of the built-in data set answered (greedy) before and after training: "
            "exact match and per-token accuracy of the answers (0 = off)."
        },
    )
    lr_scaling: str = field(
        default="none",
        metadata={
            "help": "Scale --learning_rate with the global batch: none | sqrt (lr * sqrt(B/B_base)) | linear (lr * B/B_base).",
            "choices": ["none", "sqrt", "linear"],
        },
    )
    base_global_batch_size: int | None = field(
        default=None,
        metadata={"help": "The global batch the --learning_rate was tuned for (needed by --lr_scaling)."},
    )
    merge_lora: bool = field(
        default=False, metadata={"help": "With --use_peft, also save the merged model in final_merged/."}
    )
    hang_dump_s: float = field(
        default=0.0,
        metadata={
            "help": "When no step completes for this many seconds, write every rank's Python stack to "
            "<output_dir>/hang_rank{r}.txt and stop the job (0 = off; set it above the slowest step + save)."
        },
    )
    skip_nonfinite_steps: bool = field(
        default=False,
        metadata={
            "help": "Skip the update of a step whose loss or gradients are NaN/inf (default: stop and say why)."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace the results of an earlier run in --output_dir (default: refuse)."},
    )
    verbose: bool = field(
        default=False,
        metadata={
            "help": "Show every process's library output: progress bars, warnings and transformers' log dicts "
            "(default: one log for the job, from the main process; DISTTUNE_DEBUG=1 does the same)."
        },
    )
    # Set by setup(), not on the command line: "deepspeed-zero2 x2 -> ddp x1" when the checkpoint being
    # resumed was written under another strategy or world size (then portable.py converts it), else None.
    layout_change: str | None = field(default=None, init=False)


def make_parser(defaults: dict | None = None):
    """TRL's parser of ``(DisttuneArguments, SFTConfig, ModelConfig)`` with the script's defaults
    (``SCRIPT_DEFAULTS``, then ``defaults``: the values the launch derives, such as fused AdamW on CUDA)."""
    from trl import ModelConfig, SFTConfig, TrlParser

    parser = TrlParser((DisttuneArguments, SFTConfig, ModelConfig), prog=PROG)
    parser.set_defaults(**{**SCRIPT_DEFAULTS, **(defaults or {})})
    return parser


def read_recipe(argv: list[str]) -> dict:
    """The ``--config`` recipe's mapping ({} without one), read with the bounded config reader (depth,
    aliases, size, time) before TRL reads it."""
    from disttune.config.load import read_config

    if "--config" not in argv:
        return {}
    index = argv.index("--config") + 1
    if index >= len(argv):
        raise UserError("--config needs a file: --config recipe.yaml")
    path = Path(argv[index])
    if not path.is_file():
        raise UserError(f"--config {path}: file not found.\n  fix: check the path (cwd: {Path.cwd()}).")
    try:
        recipe = read_config(path, "recipe", syntax="yaml").data
    except UserError as exc:
        raise UserError(f"--config {exc}") from None
    if not isinstance(recipe, dict):
        raise UserError(f"--config {path}: must be a mapping of argument names to values.")
    return recipe


def explicit_names(argv: list[str], recipe: dict | None = None) -> set[str]:
    """Argument names the user set, on the command line or in the ``--config`` recipe (read when not given)."""
    names = {a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")}
    return names | {str(name) for name in (read_recipe(argv) if recipe is None else recipe)}


def parse_args(argv: list[str], defaults: dict | None = None, lenient: bool = False):
    """``argv`` (and its ``--config`` recipe) as ``(DisttuneArguments, SFTConfig, ModelConfig)``; a bad value
    or an unknown key is a ``UserError``. The recipe is read with the bounded reader first (``read_recipe``):
    TRL's own reader would follow any YAML. ``lenient``: flags of another script are left over, not refused
    (``disttune check -- ARGS`` and ``disttune launch`` read any script's arguments this way)."""
    read_recipe(argv)
    parser = make_parser(defaults)
    try:
        if lenient:
            parsed = parser.parse_args_and_config(
                argv, return_remaining_strings=True, fail_with_unknown_args=False
            )
            return tuple(parsed[:3])
        return tuple(parser.parse_args_and_config(argv))
    except ValueError as exc:  # unknown keys in a recipe, invalid combinations
        raise UserError(str(exc)) from exc


def compared_flags(argv: list[str] | None):
    """The flags ``disttune check`` compares with a config (``config.script_args.COMPARED``, ``--bf16`` /
    ``--fp16``), as this parser reads them (the same types, spellings and ``--config`` recipe), kept only where
    the user set them (command line or recipe): a default never conflicts with the config. Arguments this
    parser refuses are left to the script (it reports them when launched): nothing is compared then, and
    ``problem`` says why. Imports TRL (a few seconds), so only when script arguments are given."""
    import contextlib
    import io
    import warnings

    from disttune.config.script_args import COMPARED, ScriptArgs
    from disttune.precision import split_precision_flags

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
    found = {name: _plain(getattr(training_args, name)) for name in COMPARED if name in given}
    found.update(flags)
    return ScriptArgs(**found, raw={name: _shown(argv, name, value) for name, value in found.items()})


def _plain(value):
    """An enum value as its string (``SchedulerType.COSINE`` -> ``cosine``), anything else as it is."""
    return getattr(value, "value", value)


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
