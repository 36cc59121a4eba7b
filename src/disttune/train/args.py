"""Command-line arguments of the training script.

The names are TRL's and transformers' own (``SFTConfig`` = ``TrainingArguments`` + SFT options,
``ModelConfig`` for the model and LoRA); ``DisttuneArguments`` adds only what they lack. A recipe file
given with ``--config recipe.yaml`` sets defaults that the command line overrides (TRL's ``TrlParser``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
