"""Supervised fine-tuning under any accelerate strategy: ``setup() -> main() -> fit()``.

The script never branches on the strategy: the accelerate config picks DDP, ZeRO or FSDP, and TRL's
``SFTTrainer`` does the rest. What is ours: argument reconciliation, the plan printed before the first
step, metrics files, the checks that the saved model is complete, and ``DisttuneTrainer`` (``trainer.py``):
``SFTTrainer`` with fault handling and checkpoints marked complete.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import ModelConfig, SFTConfig, TrlParser, get_peft_config

from disttune.config.load import read_config
from disttune.errors import UserError
from disttune.extensions import notify_op_builds
from disttune.plan import BatchPlan, global_batch_size, scale_learning_rate, with_derived
from disttune.train import console, restarts
from disttune.train.args import SCRIPT_DEFAULTS, DisttuneArguments
from disttune.train.checkpoints import new_run_id, read_marker
from disttune.train.data import load_train_dataset
from disttune.train.evaluate import HeldOutEvaluation, describe_change, evaluation_data, evaluation_settings
from disttune.train.failures import repeat_first_failure, report_crash, report_user_error
from disttune.train.faults import TrainingStopped, apply_collective_timeout
from disttune.train.measure import measure_run
from disttune.train.metrics import MetricsCallback, write_json
from disttune.train.portable import make_portable, portable_path
from disttune.train.preflight import check_trainer_disk, current_layout, prepare_run
from disttune.train.reconcile import (
    MP_ENV,
    apply_precision,
    cpu_mixed_precision_fallback,
    reconcile_batch_settings,
    reconcile_precision,
    split_precision_flags,
)
from disttune.train.save import check_adapter, check_final_model, save_final, save_merged_lora
from disttune.train.strategy import (
    cpu_distributed_defaults,
    deepspeed_auto_sizes,
    default_allocator,
    describe,
    promote_fsdp_on_cpu,
    rank_from_env,
    world_size_from_env,
    zero3_moe_leaf_modules,
)
from disttune.train.teardown import release_trainer, shutdown_distributed
from disttune.train.tiny import TINY_NAME, tiny_checkpoint
from disttune.train.trainer import DisttuneTrainer


def read_recipe(argv: list[str]) -> dict:
    """The ``--config`` recipe's mapping ({} without one), read with the bounded config reader (depth,
    aliases, size, time) before TRL reads it."""
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


def _explicit_names(argv: list[str], recipe: dict | None = None) -> set[str]:
    """Argument names the user set, on the command line or in the ``--config`` recipe (read when not given)."""
    names = {a[2:].split("=", 1)[0] for a in argv if a.startswith("--")}
    return names | {str(name) for name in (read_recipe(argv) if recipe is None else recipe)}


def parse_arguments(argv: list[str], defaults: dict | None = None):
    """Parse ``argv`` into ``(DisttuneArguments, SFTConfig, ModelConfig, explicit_names)``."""
    explicit = _explicit_names(argv)
    parser = TrlParser((DisttuneArguments, SFTConfig, ModelConfig), prog="07_distributed_training.py")
    parser.set_defaults(**{**SCRIPT_DEFAULTS, **(defaults or {})})
    try:
        script_args, training_args, model_args = parser.parse_args_and_config(argv)
    except ValueError as exc:  # unknown keys in a recipe, invalid combinations
        raise UserError(str(exc)) from exc
    return script_args, training_args, model_args, explicit


def load_model_and_tokenizer(model_args, seed: int = 42, trust_remote_code: bool = False):
    """The built-in ``tiny`` preset, or ``from_pretrained`` on a local folder or hub id."""
    name = model_args.model_name_or_path
    if name == TINY_NAME:
        name = str(tiny_checkpoint(seed))
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


def setup(argv: list[str]):
    """Parse and reconcile every setting; returns ``(script_args, training_args, model_args, notes)``."""
    cuda = torch.cuda.is_available()
    allocator = default_allocator() if cuda else None  # before the first CUDA allocation
    restarts.init_restarted_process_group()  # after a restart by torchrun's agent: see restarts.py
    recipe = read_recipe(argv)
    explicit = _explicit_names(argv, recipe)
    # Precision has one source, the launch (config file or --mixed_precision): --bf16/--fp16 may only agree.
    launched = os.environ.get(MP_ENV)
    argv_rest, user_precision = split_precision_flags(argv, recipe)
    reconcile_precision(user_precision, launched)
    defaults, notes = cpu_distributed_defaults(cuda)
    if cuda:
        defaults["optim"] = "adamw_torch_fused"  # one fused kernel per step on GPU; same math as adamw_torch
    if "save_steps" in explicit and "save_strategy" not in explicit:
        defaults["save_strategy"] = "steps"  # --save_steps N alone checkpoints, as in plain transformers
    if allocator:
        notes.append(f"CUDA allocator: {allocator}")
    warning = cpu_mixed_precision_fallback(cuda)
    if warning:
        notes.append(warning)
    if launched is not None:
        # Built without the user's flags (they agree, see above): transformers' bf16 check is for GPUs only.
        argv = [*argv_rest, "--bf16", "false", "--fp16", "false"]
    script_args, training_args, model_args, _ = parse_arguments(argv, defaults)
    if launched is not None:
        apply_precision(training_args, os.environ[MP_ENV])
    promote_fsdp_on_cpu(cuda)
    evaluation_settings(script_args, training_args, explicit)
    if deepspeed_auto_sizes(training_args):
        notes.append(
            "DeepSpeed bucket sizes and ZeRO-3 persistence threshold derived from the model's hidden size"
        )
    if training_args.include_num_input_tokens_seen == "all":
        training_args.include_num_input_tokens_seen = "non_padding"
    notes += reconcile_batch_settings(training_args, explicit)
    if script_args.lr_scaling != "none":
        if not script_args.base_global_batch_size:
            raise UserError(
                "--lr_scaling needs --base_global_batch_size (the global batch the learning rate was tuned for)."
            )
        batch = batch_plan(training_args, world_size_from_env()).global_batch_size
        lr = scale_learning_rate(
            training_args.learning_rate, batch, script_args.base_global_batch_size, script_args.lr_scaling
        )
        notes.append(
            f"learning_rate {training_args.learning_rate:g} -> {lr:g} ({script_args.lr_scaling} scaling, "
            f"global batch {batch} vs base {script_args.base_global_batch_size})"
        )
        training_args.learning_rate = lr
    apply_collective_timeout(training_args.ddp_timeout)  # transformers leaves gloo at 30 min on CPU
    notes += prepare_run(script_args, training_args, explicit)
    return script_args, training_args, model_args, notes


def batch_plan(training_args, world_size: int) -> BatchPlan:
    """The run's batch layout: global batch = micro batch x world size x accumulation
    (``plan.global_batch_size``); tokens per step <= global batch x max_length (``plan.with_derived``)."""
    per_device, accumulation = (
        training_args.per_device_train_batch_size,
        training_args.gradient_accumulation_steps,
    )
    layout = BatchPlan(
        world_size,
        per_device,
        accumulation,
        global_batch_size(per_device, world_size, accumulation),
        training_args.learning_rate,
    )
    return with_derived(layout, training_args.max_length or None)


def describe_checkpointing(training_args) -> str:
    """Whether and how often the run writes ``checkpoint-N`` folders, for the plan."""
    strategy = str(getattr(training_args.save_strategy, "value", training_args.save_strategy)).lower()
    if strategy == "no":
        return "off (--save_steps N turns them on)"
    keep = (
        f", keep the last {training_args.save_total_limit}"
        if training_args.save_total_limit
        else ", keep all"
    )
    if strategy == "steps":
        every = f"every {training_args.save_steps:g} steps"
    else:
        every = f"every {strategy}"
    return f"{every} and at the end{keep}"


def format_plan(info: dict, training_args, tokens_per_step: int) -> str:
    """The plan printed before the first step."""
    strategy = info["distributed_type"] + (
        f" ZeRO-{info['zero_stage']}" if info["zero_stage"] is not None else ""
    )
    global_batch = batch_plan(training_args, info["world_size"]).global_batch_size
    rows = [
        ("strategy", f"{strategy} on {info['device']} ({info['mixed_precision']} precision)"),
        ("world size", info["world_size"]),
        ("micro batch per device", training_args.per_device_train_batch_size),
        ("gradient accumulation", training_args.gradient_accumulation_steps),
        (
            "global batch",
            f"{global_batch} = {training_args.per_device_train_batch_size} x {info['world_size']} x "
            f"{training_args.gradient_accumulation_steps}",
        ),
        ("tokens per step", f"<= {tokens_per_step} (global batch x max_length {training_args.max_length})"),
        ("learning rate", f"{training_args.learning_rate:g}"),
        (
            "max steps",
            training_args.max_steps
            if training_args.max_steps > 0
            else f"{training_args.num_train_epochs} epochs",
        ),
        ("checkpoints", describe_checkpointing(training_args)),
    ]
    width = max(len(k) for k, _ in rows)
    return "disttune plan\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def build_trainer(
    script_args, training_args, model_args, notes: list[str]
) -> tuple[DisttuneTrainer, MetricsCallback, str, HeldOutEvaluation]:
    """Model, tokenizer and data, in our ``DisttuneTrainer`` (TRL's ``SFTTrainer`` with fault handling and
    crash-safe checkpoints, see ``trainer.py``) with the metrics and held-out evaluation callbacks; returns
    it, the metrics callback, the data format and the evaluation callback. What it set up on its own (MoE
    leaf modules) is added to ``notes``."""
    set_seed(training_args.seed)  # the same initial weights under every strategy
    model, tokenizer = load_model_and_tokenizer(
        model_args, training_args.seed, training_args.trust_remote_code
    )
    moe = zero3_moe_leaf_modules(
        model
    )  # MoE experts under ZeRO-3: gathered whole (see disttune.train.strategy)
    if moe:
        notes.append(moe)
    with training_args.main_process_first(desc="dataset"):  # the others then read its cache
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
    run_id = new_run_id(training_args.resume_from_checkpoint)
    metrics = MetricsCallback(training_args.output_dir, run_id=run_id)
    held_out = len(heldout) if heldout else len(eval_dataset) if eval_dataset is not None else 0
    evaluation = HeldOutEvaluation(
        heldout, eval_dataset is not None, f"{script_args.dataset_name}: {held_out} held-out examples"
    )
    trainer = DisttuneTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=[
            metrics,
            restarts.Progress(training_args.output_dir, world_size_from_env()),
            evaluation,
        ],
        run_info={
            **current_layout(),
            "run_id": run_id,
            "global_batch_size": batch_plan(training_args, world_size_from_env()).global_batch_size,
        },
        skip_nonfinite_steps=script_args.skip_nonfinite_steps,
        hang_dump_s=script_args.hang_dump_s,
    )
    console.attach(trainer, metrics, script_args.verbose)  # one step line instead of transformers' dicts
    evaluation.attach(trainer)
    return trainer, metrics, fmt, evaluation


@dataclass
class RunRecord:
    """One run as ``fit`` needs it: the parsed arguments, the trainer, and what setup noted."""

    script_args: DisttuneArguments
    training_args: SFTConfig
    model_args: ModelConfig
    trainer: DisttuneTrainer
    metrics: MetricsCallback
    data_format: str  # the dataset's format as detected by ``data.load_train_dataset``
    notes: list[str] = field(default_factory=list)  # printed before the plan and kept in run_summary.json
    evaluation: HeldOutEvaluation | None = None  # before/after numbers on the held-out data (evaluate.py)


def save_outputs(trainer, final_dir: Path, script_args, model_args, training_args) -> None:
    """Write ``final/`` and prove it loads back as the trained weights; with --merge_lora also ``final_merged/``.

    Every rank must call it (the weights are gathered from all of them); the checks run on the main process.
    With --push_to_hub the output folder is then pushed, as ``Trainer.save_model`` does.
    """
    trained = save_final(trainer, final_dir)
    if trainer.accelerator.is_main_process and not model_args.use_peft:
        check_final_model(final_dir, trained, training_args.trust_remote_code)
    elif trainer.accelerator.is_main_process:
        check_adapter(final_dir, trained)
        if script_args.merge_lora:
            base = model_args.model_name_or_path
            if base == TINY_NAME:
                base = str(tiny_checkpoint(training_args.seed))
            merged = save_merged_lora(
                base, final_dir, final_dir.parent / "final_merged", training_args.trust_remote_code
            )
            print(f"disttune: merged LoRA model saved in {merged}", flush=True)
    del trained
    if training_args.push_to_hub:  # what trainer.save_model did here; every rank takes part in its gather
        trainer.push_to_hub(commit_message="Model save")


def fit(record: RunRecord) -> dict:
    """Train, then write ``run_summary.json`` and the final model; returns the summary."""
    trainer, training_args, metrics = record.trainer, record.training_args, record.metrics
    accelerator = trainer.accelerator
    info = describe(accelerator)
    batch = batch_plan(training_args, info["world_size"])
    if accelerator.is_main_process:
        for note in record.notes:
            print(f"disttune: {note}", flush=True)
        print(
            f"disttune: data format '{record.data_format}' from {record.script_args.dataset_name}", flush=True
        )
        print(format_plan(info, training_args, batch.tokens_per_step or 0), flush=True)

    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    measured = measure_run(trainer)
    final_dir = Path(training_args.output_dir) / "final"
    # Extending a finished run: its final/ is replaced only once the new one is written and checked.
    written = final_dir.with_name("final.partial") if final_dir.exists() else final_dir
    save_outputs(trainer, written, record.script_args, record.model_args, training_args)
    if written != final_dir and accelerator.is_main_process:
        shutil.rmtree(final_dir)
        written.rename(final_dir)
    summary = {
        **info,
        "per_device_train_batch_size": batch.per_device_train_batch_size,
        "gradient_accumulation_steps": batch.gradient_accumulation_steps,
        "global_batch_size": batch.global_batch_size,
        "learning_rate": training_args.learning_rate,
        "max_grad_norm": training_args.max_grad_norm,
        "max_length": training_args.max_length,
        **measured,
        "global_step": trainer.state.global_step,
        "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 3),
        "tokens_per_second": metrics.tokens_per_second,
        "final_loss": metrics.losses[-1] if metrics.losses else None,
        "data_format": record.data_format,
        "final_dir": str(final_dir),
        "resumed_from": training_args.resume_from_checkpoint,
        "layout_change": record.script_args.layout_change,
        "restarts": restarts.read_restarts(training_args.output_dir),
        "notes": record.notes,
        "eval": record.evaluation.summary() if record.evaluation else None,
    }
    if accelerator.is_main_process:
        write_json(Path(training_args.output_dir) / "run_summary.json", summary)
        learned = describe_change(summary["eval"])
        if learned:
            print(f"disttune: {learned}", flush=True)
        print(f"disttune: done: final loss {summary['final_loss']}, model saved in {final_dir}", flush=True)
    return summary


def resume_across_layouts(trainer, script_args, model_args, training_args) -> str | None:
    """When the checkpoint comes from another strategy or world size: convert it once (main process; the
    others wait) and have the trainer load the portable copy (``portable.py``). Returns the note."""
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None or not script_args.layout_change:
        return None
    if model_args.use_peft:
        raise UserError(
            f"--resume_from_checkpoint {checkpoint}: {script_args.layout_change}: a LoRA run resumes only "
            "under the strategy and world size that wrote it.\n  fix: launch with the checkpoint's accelerate "
            "config and --num_processes."
        )
    model = trainer.model
    # Under ZeRO-3 a parameter is an empty placeholder from the start; its real shape is ds_shape.
    shapes = {n: tuple(getattr(p, "ds_shape", p.shape)) for n, p in model.named_parameters()}
    decay = set(trainer.get_decay_parameter_names(model))
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    order = [n for n, _ in trainable if n in decay] + [n for n, _ in trainable if n not in decay]
    note = None
    with trainer.accelerator.main_process_first():
        if trainer.accelerator.is_main_process:
            _, note = make_portable(checkpoint, read_marker(checkpoint) or {}, shapes, order)
    trainer.portable = portable_path(checkpoint)
    return note


def run(argv: list[str]) -> dict:
    """Set up, train and save; returns the run summary. The trainer is freed when this returns.

    How the run ended on this rank, when it failed after the checks of ``setup`` passed, is noted for the
    restart records (``restarts.py``); a run refused by them leaves the output folder as it was.
    """
    output_dir = None
    try:
        script_args, training_args, model_args, notes = setup(argv)
        output_dir = training_args.output_dir
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        if rank_from_env() == 0:
            restarts.clear(output_dir)  # a new job (not a restart) keeps no restart records of an old one
            restarted = restarts.note_restart(output_dir, training_args.resume_from_checkpoint)
            if restarted:
                notes.insert(0, restarted)
        trainer, metrics, fmt, evaluation = build_trainer(script_args, training_args, model_args, notes)
        try:
            check_trainer_disk(trainer, training_args)
            converted = resume_across_layouts(trainer, script_args, model_args, training_args)
            if converted:
                notes.append(converted)
            return fit(
                RunRecord(script_args, training_args, model_args, trainer, metrics, fmt, notes, evaluation)
            )
        finally:
            release_trainer(trainer)
    except BaseException as exc:
        if output_dir is not None and not isinstance(exc, (TrainingStopped, KeyboardInterrupt)):
            restarts.record_end(output_dir, *restarts.cause_of(exc))
        raise


def main(argv: list[str] | None = None) -> int:
    """Run the training script; returns the exit code (1 with a clear message for a user mistake)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    console.quiet_console(console.verbose_requested(argv))  # one log for the job (see console.py)
    stopped = None
    try:
        # From the start: DeepSpeed builds its ops (and may wait on a stale build lock) while the arguments
        # are parsed; every 30 s the first process of each machine says which op and for how long.
        with notify_op_builds():
            run(argv)
    except TrainingStopped as exc:  # SIGTERM/SIGINT: checkpoint saved; say how to go on
        stopped = str(exc)  # not the exception: its traceback would keep the trainer alive
    except UserError as exc:
        report_user_error(exc, "07_distributed_training.py")  # once per job, however many ranks hit it
        return exc.exit_code
    except Exception as exc:  # the cause and the likely fix as the last lines (see failures.py)
        report_crash(exc)
        return 1
    except SystemExit as exc:  # a collective lost its peer (trainer.py): repeat the peer's cause
        if exc.code:
            repeat_first_failure()
        raise
    shutdown_distributed()  # here, once the trainer (and any traceback holding it) is gone
    if stopped is not None and rank_from_env() == 0:
        print(f"disttune: {stopped}", flush=True)
    return 0
