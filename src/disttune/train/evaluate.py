"""Did it learn? Held-out evaluation before the first step and after the last, under every strategy.

- The built-in data set: ``--heldout_examples`` questions that are never trained on (``data.builtin_heldout``)
  are answered by greedy decoding; scored by exact match and per-token accuracy of the answer span
  (``score_answers``).
- A user's data set: ``--eval_split`` (a split name or a held-out fraction) becomes the trainer's
  ``eval_dataset``, evaluated by transformers' own path (``--eval_strategy``, ``--eval_steps``, ...) and in any
  case before the first step (``eval_on_start``) and after the last (the callback asks for it).

``HeldOutEvaluation`` is the callback that does both and keeps the numbers for ``run_summary.json``. Every
rank generates: each answers its share of the questions (accelerate's ``split_between_processes``, padded so
that all make the same calls) with ``synced_gpus`` (under FSDP2 a forward pass gathers parameters from every
rank; finished ranks keep stepping until all are done), then ``gather_object``. The model is the one
TRL's ``unwrap_model_for_generation`` gives, as TRL's own generating trainers use it: under ZeRO-3 it gathers
the weights whole for the duration (a model too big for one device: ``--heldout_examples 0``) and leaves
DeepSpeed's prefetch trace clean for the next training step.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager

from transformers import TrainerCallback

from disttune.errors import UserError
from disttune.train.data import BUILTIN_NAME, builtin_heldout, split_for_eval
from disttune.train.failure import during

LOSS_KEYS = ("eval_loss", "eval_mean_token_accuracy")  # transformers' loss and TRL's token accuracy
SAMPLES_SHOWN = 3  # held-out answers printed after training
# Prompts per generate call: a rank's whole share of the default 64 in one call (short prompts and answers:
# a KV cache of a few thousand tokens, far below a training batch); measured 0.31 s vs 0.54 s in calls of 8.
GENERATE_BATCH = 64


def _strategy(training_args) -> str:
    return str(getattr(training_args.eval_strategy, "value", training_args.eval_strategy)).lower()


def wants_eval_loss(script_args, training_args) -> bool:
    """Whether the run computes an evaluation loss: with ``--eval_split``, or when ``--eval_strategy`` asks."""
    return bool(script_args.eval_split) or _strategy(training_args) != "no"


def evaluation_settings(script_args, training_args, explicit: set[str]) -> None:
    """Check the evaluation arguments; with an evaluation loss, evaluate before the first step too
    (``eval_on_start``, unless the user set it)."""
    builtin = script_args.dataset_name == BUILTIN_NAME
    if script_args.heldout_examples < 0:
        raise UserError(f"--heldout_examples {script_args.heldout_examples}: must be 0 (off) or more.")
    if builtin and script_args.eval_split:
        raise UserError(
            f"--eval_split {script_args.eval_split}: the built-in data set has its own held-out split "
            f"(--heldout_examples, {script_args.heldout_examples}).\n"
            "  fix: drop --eval_split; for an evaluation loss on the held-out split add --eval_strategy steps."
        )
    if _strategy(training_args) != "no" and not (
        script_args.eval_split or (builtin and script_args.heldout_examples)
    ):
        fix = (
            "--heldout_examples 64 (the built-in held-out split)"
            if builtin
            else "--eval_split with a split name (e.g. test) or a fraction to hold out (e.g. 0.05)"
        )
        raise UserError(
            f"--eval_strategy {_strategy(training_args)} needs an evaluation set.\n  fix: add {fix}."
        )
    if wants_eval_loss(script_args, training_args) and "eval_on_start" not in explicit:
        training_args.eval_on_start = True


def evaluation_data(script_args, training_args, dataset):
    """``(train_dataset, eval_dataset or None, held-out records to answer)`` for this run."""
    heldout: list[dict] = []
    eval_dataset = None
    if script_args.dataset_name == BUILTIN_NAME:
        if script_args.heldout_examples:
            heldout = builtin_heldout(dataset.to_list(), script_args.heldout_examples, training_args.seed)
            if wants_eval_loss(script_args, training_args):
                from datasets import Dataset

                eval_dataset = Dataset.from_list(heldout)
    elif script_args.eval_split:
        dataset, eval_dataset = split_for_eval(
            dataset,
            script_args.eval_split,
            script_args.dataset_name,
            script_args.dataset_config,
            training_args.seed,
        )
    return dataset, eval_dataset, heldout


def _through_eos(tokens: Sequence[int], eos_id: int | None) -> list[int]:
    """The tokens up to and including the first end mark (all of them without one)."""
    tokens = list(tokens)
    if eos_id is not None and eos_id in tokens:
        return tokens[: tokens.index(eos_id) + 1]
    return tokens


def score_answers(pairs: Iterable[tuple[Sequence[int], Sequence[int]]], eos_id: int | None) -> dict:
    """Exact match and per-token accuracy of generated answers against reference answers (token ids).

    Both sides are cut after their first end mark (``eos_id``: the reference's end of turn, which the model
    must produce to stop). Exact match: the generated answer equals the reference, end mark included.
    Per-token accuracy: reference tokens that the generated answer has at the same position, over all
    reference tokens (micro-averaged over the examples).
    """
    examples = exact = correct = total = 0
    for generated, reference in pairs:
        gen, ref = _through_eos(generated, eos_id), _through_eos(reference, eos_id)
        examples += 1
        exact += gen == ref
        correct += sum(g == r for g, r in zip(gen, ref, strict=False))
        total += len(ref)
    return {
        "examples": examples,
        "exact_match": round(exact / examples, 4) if examples else None,
        "token_accuracy": round(correct / total, 4) if total else None,
        "exact": exact,
        "tokens_correct": correct,
        "tokens": total,
    }


def encode_heldout(examples: list[dict], tokenizer) -> list[tuple[list[int], list[int]]]:
    """``(prompt ids, reference answer ids)`` per conversational record, through the chat template.

    The prompt is every turn but the last with the generation prompt; the reference is what the template
    adds for the last (assistant) turn, cut after its end mark.
    """
    encoded = []
    for example in examples:
        messages = example["messages"]
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prompt):  # a template that rewrites earlier turns: score nothing wrong
            raise UserError(
                "the chat template does not extend the prompt with the answer; cannot score answers."
            )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
        encoded.append((prompt_ids, _through_eos(answer_ids, tokenizer.eos_token_id)))
    return encoded


def greedy_answers(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int, device):
    """Greedy continuations (new token ids only) of ``prompts``, left-padded in batches.

    With several processes every rank must call this with the same number of prompts (see the module
    docstring): ``synced_gpus`` keeps the ranks' forward passes in step.
    """
    import torch
    import torch.distributed as dist
    from transformers import GenerationConfig

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    outputs: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_config=config,
                synced_gpus=world > 1,
            )
        outputs += out[:, width:].tolist()
    return outputs


@contextmanager
def without_router_logits(model):
    """A mixture-of-experts model generates with its router logits off, as configured again afterwards.

    TRL turns ``output_router_logits`` on for training (the load-balancing loss); during generation the
    model would then compute that loss over the cached steps, where the attention mask no longer matches
    the routed tokens (Qwen3-MoE: "size of tensor a (64) must match ... (3200)")."""
    config = getattr(model, "config", None)
    was = getattr(config, "output_router_logits", None)
    if was:
        config.output_router_logits = False
    try:
        yield model
    finally:
        if was:
            config.output_router_logits = was


class HeldOutEvaluation(TrainerCallback):
    """Held-out answers (built-in data) at train begin and end; evaluation losses whenever the trainer
    evaluates, with one evaluation forced after the last step. ``summary()`` holds the numbers."""

    def __init__(self, heldout: list[dict], eval_loss: bool, describe_data: str):
        self.heldout = heldout
        self.eval_loss = eval_loss
        self.data = describe_data
        self.records: dict[int, dict] = {}  # global step -> what was measured there
        self.samples: list[dict] = []
        self.trainer = None  # set by ``attach``: generation needs the prepared (wrapped) model

    def attach(self, trainer) -> None:
        """The trainer whose model is evaluated (its ``model_wrapped`` and ``accelerator``)."""
        self.trainer = trainer

    def _measure_answers(self, args, state, tokenizer, when: str) -> None:
        from accelerate import PartialState
        from accelerate.utils import gather_object
        from trl.models.utils import unwrap_model_for_generation

        started = time.perf_counter()
        encoded = encode_heldout(self.heldout, tokenizer)
        max_new = max(len(ref) for _, ref in encoded)
        unwrapped = unwrap_model_for_generation(  # gradient checkpointing is restored as the user set it
            self.trainer.model_wrapped,
            self.trainer.accelerator,
            gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs,
        )
        with PartialState().split_between_processes(list(enumerate(encoded)), apply_padding=True) as mine:
            with (
                unwrapped as model,
                without_router_logits(model),
                during("in the held-out evaluation"),
            ):
                was_training = model.training
                model.eval()
                prompts = [p for _, (p, _) in mine]
                generated = greedy_answers(model, tokenizer, prompts, max_new, GENERATE_BATCH, args.device)
                model.train(was_training)
            answered = gather_object([(i, g) for (i, _), g in zip(mine, generated, strict=True)])
        by_index = dict(answered)  # padding repeats the last question: one answer per index
        pairs = [(by_index[i], ref) for i, (_, ref) in enumerate(encoded)]
        scores = {
            **score_answers(pairs, tokenizer.eos_token_id),
            "seconds": round(time.perf_counter() - started, 2),
        }
        self.records.setdefault(state.global_step, {}).update(scores)
        self.samples = [
            {
                "question": example["messages"][-2]["content"],
                "expected": example["messages"][-1]["content"],
                "answer": tokenizer.decode(generated_ids, skip_special_tokens=True),
            }
            for example, (generated_ids, _) in zip(self.heldout[:SAMPLES_SHOWN], pairs, strict=False)
        ]
        if state.is_world_process_zero:
            from tqdm.auto import tqdm  # write through the training bar, as the step lines do

            tqdm.write(
                f"disttune: held-out answers {when} (step {state.global_step}, {scores['examples']} "
                f"examples, greedy): exact match {_pct(scores['exact_match'])} ({scores['exact']}/"
                f"{scores['examples']}), per-token accuracy {_pct(scores['token_accuracy'])} "
                f"({scores['seconds']:.1f} s)"
            )
            if when == "after training":
                for sample in self.samples:
                    tqdm.write(
                        f"  {sample['question']}  ->  {sample['answer']!r} (expected {sample['expected']!r})"
                    )

    def on_train_begin(self, args, state, control, processing_class=None, **kwargs):
        if self.heldout:
            self._measure_answers(args, state, processing_class, "before training")

    def on_step_end(self, args, state, control, **kwargs):
        if self.eval_loss and state.global_step >= state.max_steps:
            control.should_evaluate = True  # after the last step, whatever --eval_strategy says

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        kept = {k: round(float(metrics[k]), 4) for k in LOSS_KEYS if metrics and metrics.get(k) is not None}
        self.records.setdefault(state.global_step, {}).update(kept)

    def on_train_end(self, args, state, control, processing_class=None, **kwargs):
        if self.heldout and state.global_step >= state.max_steps:  # not after a stop on a signal
            self._measure_answers(args, state, processing_class, "after training")

    def summary(self) -> dict | None:
        """``{"data", "before", "after"}`` (each ``{"step", ...metrics}``) for ``run_summary.json``; None when
        nothing was measured. ``after`` is None when the run measured at one step only."""
        if not self.records:
            return None
        first, last = min(self.records), max(self.records)
        return {
            "data": self.data,
            "before": {"step": first, **self.records[first]},
            "after": {"step": last, **self.records[last]} if last != first else None,
            "samples_after": self.samples if last != first else [],
        }


def describe_change(summary: dict | None) -> str | None:
    """One line for the end of the log: each metric before -> after; None without an ``after``."""
    if not summary or not summary.get("after"):
        return None
    before, after = summary["before"], summary["after"]
    parts = []
    for key, label, fmt in (
        ("exact_match", "held-out exact match", _pct),
        ("token_accuracy", "per-token accuracy", _pct),
        ("eval_loss", "eval loss", lambda v: f"{v:.4f}"),
    ):
        if before.get(key) is not None and after.get(key) is not None:
            parts.append(f"{label} {fmt(before[key])} -> {fmt(after[key])}")
    if not parts:
        return None
    return f"did it learn? {', '.join(parts)} (steps {before['step']} -> {after['step']}, {summary['data']})"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"
