"""The peer: a plain TRL ``SFTTrainer`` script on the same model, data and settings as our training script.

    python -m disttune.train.peer --output_dir /tmp/plain --max_steps 20
    accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml --num_processes 1 \\
        src/disttune/train/peer.py --model_name_or_path /tmp/llama-1b --packing true --max_length 2048 ...

``disttune bench --vs_trl`` runs it against our script, alternating (``disttune/versus.py``).

It reads the same command line as ``07_distributed_training.py`` through TRL's own parser (``SFTConfig`` and
``ModelConfig``), starting from the same defaults (``disttune.train.args.SCRIPT_DEFAULTS``), and applies the
two settings our script derives from the launch: the precision of the accelerate config (``bf16``/``fp16``
as ``ACCELERATE_MIXED_PRECISION`` or a DeepSpeed JSON that pins it says, what a TRL user sets to match the
config) and fused AdamW on CUDA.
The built-in data set, the model loaded with ``from_pretrained`` in float32. Nothing of ours runs during
training (no callbacks, no checks) but ``StepClock``, which writes the wall time and token count at each
log to ``<output_dir>/clock.jsonl`` (no device work), so that both sides' steady-state throughput is
computed the same way. Prints transformers' own final metrics (``train_runtime``, ``num_input_tokens_seen``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, set_seed
from trl import ModelConfig, SFTConfig, SFTTrainer, TrlParser

from disttune.train.args import SCRIPT_DEFAULTS
from disttune.train.data import builtin_examples
from disttune.train.reconcile import launch_precision
from disttune.train.teardown import release_trainer, shutdown_distributed
from disttune.train.tiny import TINY_NAME, tiny_checkpoint


@dataclass
class PeerArguments:
    """Our script's own options that a plain run ignores (accepted so that both take one command line)."""

    dataset_name: str = "builtin"
    heldout_examples: int = 0
    overwrite_output_dir: bool = False


class StepClock(TrainerCallback):
    """``{"step", "time", "tokens"}`` at every log, on the main process: host clock only."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and "loss" in logs:
            record = {"step": state.global_step, "time": time.time(), "tokens": state.num_input_tokens_seen}
            with self.path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")


def main() -> None:
    parser = TrlParser((PeerArguments, SFTConfig, ModelConfig))
    defaults = {k: v for k, v in SCRIPT_DEFAULTS.items() if k != "model_name_or_path"}
    parser.set_defaults(**defaults, model_name_or_path=SCRIPT_DEFAULTS["model_name_or_path"])
    peer_args, config, model_args = parser.parse_args_and_config()
    if config.include_num_input_tokens_seen in (True, "all"):
        config.include_num_input_tokens_seen = "non_padding"  # what our script turns it into
    precision = launch_precision()[0] or "no"  # the config's, or the DeepSpeed JSON's where it pins one
    if precision == "fp16" and not torch.cuda.is_available():
        precision = "bf16"  # as our script does on a CPU (no fp16 autocast kernels there)
    config.bf16, config.fp16 = precision == "bf16", precision == "fp16"
    if torch.cuda.is_available() and config.optim == "adamw_torch":
        config.optim = "adamw_torch_fused"
    config.assistant_only_loss = True  # the built-in chat template marks the answers, as in our script
    set_seed(config.seed)
    path = model_args.model_name_or_path
    if path == TINY_NAME:
        path = str(tiny_checkpoint(config.seed))
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation=model_args.attn_implementation
    )
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    clock = Path(config.output_dir) / "clock.jsonl"
    clock.unlink(missing_ok=True)
    trainer = SFTTrainer(
        model=model,
        args=config,
        processing_class=AutoTokenizer.from_pretrained(path),
        train_dataset=Dataset.from_list(builtin_examples(seed=config.seed)),
        callbacks=[StepClock(clock)],
    )
    result = trainer.train()
    if trainer.accelerator.is_main_process:
        metrics = {**result.metrics, "num_input_tokens_seen": trainer.state.num_input_tokens_seen}
        print("PLAIN_TRL_METRICS", metrics, flush=True)
        (Path(config.output_dir) / "train_metrics.json").write_text(json.dumps(metrics) + "\n")
    del peer_args
    # After the timing: leave without gloo's occasional abort at exit (see disttune.train.teardown).
    release_trainer(trainer)
    del trainer, model
    shutdown_distributed()


if __name__ == "__main__":
    main()
