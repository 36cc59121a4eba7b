"""Host-device synchronisations per optimizer step: ours against plain TRL's, on the same settings.

On a GPU every read of a device value on the host (``item``, ``tolist``, ``bool``, ``float``, ``int``,
``cpu``, ``numpy``) waits for the queued kernels; each one the training step adds beyond what plain TRL does
stalls the GPU. Counted here on the CPU (the same calls are made there), in one process, over steady-state
steps that log nothing: our trainer may add at most one (the guard's agreed flags), never a scan of every
gradient nor a read per micro-step.
"""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

SYNCING = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")
FIRST, LAST = 3, 9  # steps 3..8 counted: after the first steps' one-off work (the memory probe at step 2)


class SyncCounter(TrainerCallback):
    """Counts the syncing tensor methods called between the start of step FIRST and of step LAST."""

    def __init__(self, monkeypatch):
        self.calls = 0
        self.counting = False
        for name in SYNCING:
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _original=original, **kwargs):
                if self.counting:
                    self.calls += 1
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)

    def on_step_begin(self, args, state, control, **kwargs):
        self.counting = FIRST <= state.global_step + 1 < LAST

    def per_step(self) -> float:
        return self.calls / (LAST - FIRST)


ARGS = {
    "max_steps": LAST + 1,
    "logging_steps": 1000,  # no logging step among those counted (both sides sync more when they log)
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 2,  # two micro-steps per optimizer step: a read per micro-step shows
    "max_length": 64,
}


def _ours(tmp_path, monkeypatch) -> float:
    from disttune.train.build import build_trainer
    from disttune.train.settings import resolve

    argv = ["--output_dir", str(tmp_path / "ours"), "--heldout_examples", "0"]
    for key, value in ARGS.items():
        argv += [f"--{key}", str(value)]
    trainer = build_trainer(resolve(argv)).trainer
    counter = SyncCounter(monkeypatch)
    trainer.add_callback(counter)
    trainer.train()
    return counter.per_step()


def _plain(tmp_path, monkeypatch) -> float:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from disttune.train.args import SCRIPT_DEFAULTS
    from disttune.train.data import builtin_examples
    from disttune.train.tiny import tiny_checkpoint

    config = {k: v for k, v in SCRIPT_DEFAULTS.items() if k != "model_name_or_path"}
    config.update(ARGS, output_dir=str(tmp_path / "plain"), assistant_only_loss=True)
    config["include_num_input_tokens_seen"] = "non_padding"
    path = str(tiny_checkpoint(config["seed"]))
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(path, dtype="float32"),
        args=SFTConfig(**config),
        processing_class=AutoTokenizer.from_pretrained(path),
        train_dataset=Dataset.from_list(builtin_examples(seed=config["seed"])),
    )
    counter = SyncCounter(monkeypatch)
    trainer.add_callback(counter)
    trainer.train()
    return counter.per_step()


def test_a_training_step_adds_at_most_one_host_sync_to_plain_trls(tmp_path, monkeypatch):
    plain = _plain(tmp_path, monkeypatch)
    monkeypatch.undo()
    ours = _ours(tmp_path, monkeypatch)
    assert plain > 0, "the counter saw nothing: it no longer measures"
    assert ours <= plain + 1, f"ours {ours:g} host syncs per step, plain TRL {plain:g}"
    print(f"host syncs per optimizer step: ours {ours:g}, plain TRL {plain:g}")


@pytest.mark.parametrize("gradient_norm", [True, False])
def test_the_guard_reads_the_gradients_through_one_norm(gradient_norm):
    """A NaN gradient is found from the step's norm (or, without one, a single fused norm), not by a
    Python walk that reads every gradient."""
    from types import SimpleNamespace

    from disttune.train.guards import StepGuard

    model = torch.nn.Linear(3, 2)
    model(torch.ones(1, 3)).sum().backward()
    trainer = SimpleNamespace(is_deepspeed_enabled=False, model=model)
    guard = StepGuard(trainer)
    assert int(guard._grads_nonfinite("cpu")) == 0
    model.weight.grad[0, 0] = float("nan")
    if gradient_norm:
        guard.note_grad_norm(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
    assert int(guard._grads_nonfinite("cpu")) == 1
    guard.note_grad_norm(float("inf"))  # DeepSpeed gives a float
    assert guard._grads_nonfinite("cpu") == 1
