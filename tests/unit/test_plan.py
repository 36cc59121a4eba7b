"""Golden values for the batch/LR calculator (the seed's examples and the HF Trainer's step count)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from disttune import plan
from disttune.errors import UserError


def test_global_batch_formula():
    assert plan.global_batch_size(4, 1, 4) == 16
    assert plan.global_batch_size(4, 4, 1) == 16
    assert plan.global_batch_size(2, 8, 8) == 128


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "4"])
def test_global_batch_rejects_non_positive_ints(bad):
    with pytest.raises(UserError, match="positive whole number"):
        plan.global_batch_size(bad, 1, 1)


def test_seed_example_convert_one_gpu_to_four():
    src = plan.solve(1, per_device=4, accumulation=4)
    out = plan.convert(src, 4)
    assert (
        out.num_processes,
        out.per_device_train_batch_size,
        out.gradient_accumulation_steps,
        out.global_batch_size,
    ) == (4, 4, 1, 16)


def test_convert_lowers_per_device_when_accumulation_cannot_absorb():
    src = plan.solve(1, per_device=4, accumulation=2)  # global 8
    out = plan.convert(src, 4)
    assert (out.per_device_train_batch_size, out.gradient_accumulation_steps, out.global_batch_size) == (
        2,
        1,
        8,
    )


def test_convert_impossible_lists_nearest_options():
    src = plan.solve(1, per_device=4, accumulation=4)
    with pytest.raises(UserError, match="Nearest valid options") as info:
        plan.convert(src, 3)
    globals_ = [o.global_batch_size for o in info.value.options]
    assert globals_ == [15, 18]


def test_convert_forced_per_device_rescales_lr():
    src = plan.BatchPlan(2, 4, 2, 16, learning_rate=1e-4)
    out = plan.convert(src, 8, per_device=8, lr_scaling="sqrt")
    assert out.global_batch_size == 64
    assert out.learning_rate == pytest.approx(2e-4)
    kept = plan.convert(src, 8, lr_scaling="sqrt")
    assert kept.global_batch_size == 16 and kept.learning_rate == 1e-4


def test_lr_scaling_golden():
    assert plan.scale_learning_rate(1e-4, 64, 16, "sqrt") == pytest.approx(2e-4)
    assert plan.scale_learning_rate(1e-4, 64, 16, "linear") == pytest.approx(4e-4)
    assert plan.scale_learning_rate(1e-4, 64, 16, "none") == 1e-4
    with pytest.raises(UserError, match="lr_scaling"):
        plan.scale_learning_rate(1e-4, 64, 16, "cubic")
    with pytest.raises(UserError, match="learning_rate"):
        plan.scale_learning_rate(-1.0, 64, 16, "sqrt")


def test_solve_each_unknown():
    assert plan.solve(4, per_device=4, global_batch=64).gradient_accumulation_steps == 4
    assert plan.solve(4, accumulation=4, global_batch=64).per_device_train_batch_size == 4
    assert plan.solve(4, per_device=4, accumulation=4).global_batch_size == 64


def test_solve_not_divisible_lists_options():
    with pytest.raises(UserError, match="not divisible") as info:
        plan.solve(3, per_device=4, global_batch=16)
    assert [
        (o.per_device_train_batch_size, o.gradient_accumulation_steps, o.global_batch_size)
        for o in info.value.options
    ][:2] == [(4, 1, 12), (4, 2, 24)]


def test_solve_needs_two_and_checks_agreement():
    with pytest.raises(UserError, match="give two"):
        plan.solve(2, per_device=4)
    with pytest.raises(UserError, match="disagrees"):
        plan.solve(2, per_device=4, accumulation=2, global_batch=17)


def test_steps_per_epoch_matches_trainer_counting():
    # 1000 examples, b=4: 250 batches -> 125 per rank on 2 ranks; A=4 -> 31 full windows + 1 partial = 32
    assert plan.steps_per_epoch(1000, 4, 2, 4) == 32 == math.ceil(1000 / 32)
    # 1001 examples: 251 batches -> 126 per rank (even_batches pads) -> 32; drop_last: 250 -> 125 -> 32
    assert plan.steps_per_epoch(1001, 4, 2, 4) == 32
    assert plan.steps_per_epoch(1001, 4, 2, 4, drop_last=True) == 32
    assert plan.steps_per_epoch(1001, 4, 2, 1, drop_last=True) == 125
    assert plan.steps_per_epoch(10, 4, 1, 1, drop_last=True) == 2
    assert plan.steps_per_epoch(3, 4, 2, 1, drop_last=True) == 1  # Trainer clamps to >= 1
    assert plan.steps_per_epoch(10, 4, 1, 1) == 3


@given(n=st.integers(1, 10_000), b=st.integers(1, 16), w=st.integers(1, 16), a=st.integers(1, 16))
def test_steps_without_drop_last_is_ceil_of_global(n, b, w, a):
    assert plan.steps_per_epoch(n, b, w, a) == math.ceil(n / (b * w * a))


def test_with_derived_tokens_and_steps():
    p = plan.with_derived(plan.solve(4, per_device=4, accumulation=1), max_length=2048, num_examples=100)
    assert p.tokens_per_step == 16 * 2048 and p.steps_per_epoch == 7


@pytest.mark.parametrize(
    "n,b,w,a,drop",
    [
        (1000, 4, 2, 4, False),
        (1001, 4, 2, 4, True),
        (7, 2, 4, 3, False),
        (7, 2, 4, 3, True),
        (130, 3, 8, 2, False),
        (64, 8, 8, 1, True),
    ],
)
def test_steps_per_epoch_against_accelerate_sampler(n, b, w, a, drop):
    """Independent reference: accelerate's own sharded batch sampler length, then the Trainer's formula."""
    torch_data = pytest.importorskip("torch.utils.data")
    from accelerate.data_loader import BatchSamplerShard

    sampler = torch_data.BatchSampler(torch_data.SequentialSampler(range(n)), batch_size=b, drop_last=drop)
    len_dataloader = len(BatchSamplerShard(sampler, num_processes=w, process_index=0, even_batches=True))
    trainer = max(len_dataloader // a + int(len_dataloader % a > 0), 1)  # Trainer.set_initial_training_values
    assert plan.steps_per_epoch(n, b, w, a, drop_last=drop) == trainer
