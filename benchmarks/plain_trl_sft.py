"""The peer: a plain TRL ``SFTTrainer`` script on the same model, data and config as our training script.

    python benchmarks/plain_trl_sft.py --output_dir /tmp/plain --max_steps 20

Same tiny checkpoint (``tiny_checkpoint(seed)``), same built-in examples, the same SFTConfig values as
``disttune.train.args.SCRIPT_DEFAULTS``; nothing of ours runs during training (no callbacks, no checks);
after it, our teardown frees the model and leaves the process group.
Prints TRL/transformers' own final metrics line, which holds ``train_tokens_per_second``.
"""

from __future__ import annotations

import argparse

from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import SFTConfig, SFTTrainer

from disttune.train.args import SCRIPT_DEFAULTS
from disttune.train.data import builtin_examples
from disttune.train.teardown import release_trainer, shutdown_distributed
from disttune.train.tiny import tiny_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--max_steps", type=int, default=20)
    parser.add_argument(
        "--per_device_train_batch_size", type=int, default=SCRIPT_DEFAULTS["per_device_train_batch_size"]
    )
    args = parser.parse_args()
    config = {k: v for k, v in SCRIPT_DEFAULTS.items() if k != "model_name_or_path"}
    config.update(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        logging_steps=5,
        per_device_train_batch_size=args.per_device_train_batch_size,
        assistant_only_loss=True,
        include_num_input_tokens_seen="non_padding",
    )
    set_seed(config["seed"])
    path = str(tiny_checkpoint(config["seed"]))
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(path)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**config),
        processing_class=tokenizer,
        train_dataset=Dataset.from_list(builtin_examples(seed=config["seed"])),
    )
    result = trainer.train()
    print("PLAIN_TRL_METRICS", result.metrics, flush=True)
    # After the timing: leave without gloo's occasional abort at exit (see disttune.train.teardown).
    release_trainer(trainer)
    del trainer, model
    shutdown_distributed()


if __name__ == "__main__":
    main()
