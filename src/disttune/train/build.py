"""The model, the tokenizer, the data and the trainer, with every callback assembled in one place.

``build_trainer(settings)`` loads the model (the built-in ``tiny`` preset, a local folder or a hub id) and
the data, and makes ``DisttuneTrainer`` (``trainer.py``: TRL's ``SFTTrainer`` with the guard against signals
and non-finite steps, and crash-safe checkpoints) with disttune's callbacks: metrics (``metrics.py``),
progress for the failure records (``restarts.Progress``), the held-out evaluation (``evaluate.py``), the
hang watchdog with ``--hang_dump_s`` (``guards.py``), and the one-line console (``console.py``). Last, the
checkpoints the run keeps are checked against the free disk, and a checkpoint of another layout is
converted for the resume (``portable.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import get_peft_config

from disttune.errors import UserError
from disttune.train import console
from disttune.train.checkpoints import new_run_id
from disttune.train.data import load_train_dataset
from disttune.train.distributed import current_layout, world_size_from_env, zero3_moe_leaf_modules
from disttune.train.evaluate import HeldOutEvaluation, evaluation_data
from disttune.train.guards import HangWatchdog
from disttune.train.kernels import choose_liger, describe_attention, liger_model_types
from disttune.train.metrics import MetricsCallback
from disttune.train.portable import prepare_resume
from disttune.train.prepare import check_trainer_disk
from disttune.train.restarts import Progress
from disttune.train.settings import Settings
from disttune.train.tiny import TINY_NAME, tiny_checkpoint
from disttune.train.trainer import DisttuneTrainer


@dataclass
class Run:
    """A built run: the trainer, the callbacks whose numbers go into run_summary.json, the data format."""

    trainer: DisttuneTrainer
    metrics: MetricsCallback
    evaluation: HeldOutEvaluation
    data_format: str  # the dataset's format as detected by ``data.load_train_dataset``


def base_model_path(model_args, seed: int) -> str:
    """``--model_name_or_path`` as a loadable path or hub id (the built-in ``tiny`` preset is built once)."""
    name = model_args.model_name_or_path
    return str(tiny_checkpoint(seed)) if name == TINY_NAME else name


def load_model_and_tokenizer(model_args, seed: int = 42, trust_remote_code: bool = False):
    """The built-in ``tiny`` preset, or ``from_pretrained`` on a local folder or hub id."""
    name = base_model_path(model_args, seed)
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().exists():
        raise UserError(
            f"--model_name_or_path {name}: no such folder (cwd: {Path.cwd()}).\n"
            "  fix: give the folder that holds the model's config.json and weights, a hub id, or 'tiny'."
        )
    dtype = model_args.dtype if model_args.dtype not in (None, "auto") else "float32"
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name, revision=model_args.model_revision, trust_remote_code=trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(
            name,
            revision=model_args.model_revision,
            trust_remote_code=trust_remote_code,
            attn_implementation=model_args.attn_implementation,
            dtype=getattr(torch, dtype),
        )
    except OSError as exc:
        raise UserError(
            f"--model_name_or_path {name}: cannot load it ({str(exc).splitlines()[0]}).\n"
            "  fix: give a local folder with config.json and weights, a hub id reachable from here, or 'tiny'."
        ) from exc
    return model, tokenizer


def messages_to_prompt_completion(dataset):
    """Split each conversation before its last assistant turn, for chat templates without generation marks.

    TRL computes an assistant-only loss only with ``{% generation %}`` marks in the template; splitting
    keeps a completion-only loss (on the last assistant turn) with any template.
    """

    def split(example):
        messages = example["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return {"prompt": messages[:last], "completion": messages[last:]}

    return dataset.map(split, remove_columns=["messages"])


def fast_path(settings: Settings, model) -> list[str]:
    """Liger's kernels and the attention line (``kernels.py``): set on the arguments before the trainer is
    made (transformers applies Liger there); returns the plan's lines."""
    training_args, cuda = settings.training_args, torch.cuda.is_available()
    asked = training_args.use_liger_kernel if "use_liger_kernel" in settings.explicit else None
    use, liger = choose_liger(
        asked, cuda, current_layout(), model.config.model_type, liger_model_types() if cuda else None
    )
    training_args.use_liger_kernel = use
    attention = describe_attention(
        model.config,
        settings.model_args.attn_implementation,
        cuda,
        bool(getattr(training_args, "padding_free", False)),
    )
    return [line for line in (liger, attention) if line]


def _datasets(settings: Settings, tokenizer):
    """``(train, eval or None, held-out records, format)``, prepared on the main process first (the others
    then read its cache)."""
    script_args, training_args = settings.script_args, settings.training_args
    with training_args.main_process_first(desc="dataset"):
        dataset, fmt = load_train_dataset(
            script_args.dataset_name,
            script_args.dataset_train_split,
            script_args.dataset_config,
            seed=training_args.seed,
        )
        dataset, eval_dataset, heldout = evaluation_data(script_args, training_args, dataset)
        if fmt == "messages":
            if "{% generation %}" in (tokenizer.chat_template or ""):
                training_args.assistant_only_loss = True
            else:
                dataset = messages_to_prompt_completion(dataset)
                if eval_dataset is not None:
                    eval_dataset = messages_to_prompt_completion(eval_dataset)
    return dataset, eval_dataset, heldout, fmt


def build_trainer(settings: Settings) -> Run:
    """Model, tokenizer and data in ``DisttuneTrainer`` with disttune's callbacks (module docstring).
    What it set up on its own (MoE leaf modules) is added to ``settings.notes``."""
    script_args, training_args, model_args = settings.script_args, settings.training_args, settings.model_args
    set_seed(training_args.seed)  # the same initial weights under every strategy
    model, tokenizer = load_model_and_tokenizer(
        model_args, training_args.seed, training_args.trust_remote_code
    )
    moe = zero3_moe_leaf_modules(model)  # MoE experts under ZeRO-3: gathered whole (see distributed.py)
    if moe:
        settings.notes.append(moe)
    settings.notes += fast_path(settings, model)
    dataset, eval_dataset, heldout, fmt = _datasets(settings, tokenizer)
    run_id = new_run_id(training_args.resume_from_checkpoint)
    metrics = MetricsCallback(training_args.output_dir, run_id=run_id)
    held_out = len(heldout) if heldout else len(eval_dataset) if eval_dataset is not None else 0
    described = f"{script_args.dataset_name}: {held_out} held-out examples"
    evaluation = HeldOutEvaluation(heldout, eval_dataset is not None, described)
    callbacks = [metrics, Progress(training_args.output_dir, world_size_from_env()), evaluation]
    if script_args.hang_dump_s and script_args.hang_dump_s > 0:
        callbacks.append(HangWatchdog(script_args.hang_dump_s, training_args.output_dir))
    trainer = DisttuneTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=callbacks,
        run_info={**current_layout(), "run_id": run_id, "global_batch_size": settings.plan.global_batch_size},
        skip_nonfinite_steps=script_args.skip_nonfinite_steps,
    )
    console.attach(trainer, metrics, script_args.verbose)  # one step line instead of transformers' dicts
    evaluation.attach(trainer)  # generation needs the prepared (wrapped) model
    check_trainer_disk(trainer, training_args)  # the checkpoints it keeps fit on the output disk
    converted = prepare_resume(trainer, settings)  # a checkpoint of another layout: its portable copy
    if converted:
        settings.notes.append(converted)
    return Run(trainer, metrics, evaluation, fmt)
