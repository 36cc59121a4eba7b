"""The allocator's reserve (estimate/allocator.py) and the phases of a step (estimate/strategies.py)."""

from __future__ import annotations

import pytest

from disttune.estimate import allocator
from disttune.estimate.models import count_params, spec_from_config
from disttune.estimate.strategies import GIB, Inputs, ModelInfo, estimate_strategy

MIB = 2**20
SPEC = spec_from_config(
    {
        "model_type": "llama",
        "vocab_size": 32000,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
    }
)
MODEL = ModelInfo(SPEC.name, count_params(SPEC).total, SPEC)
H200 = dict(num_processes=1, per_device_train_batch_size=4, max_length=2048, packing=True)


def test_stranded_blocks_best_fit():
    """Blocks cut for a smaller step: the largest tensors fit no old block; smaller ones are cut from the
    larger old blocks (best fit, split when over 1 MiB remains)."""
    # two 128 MiB and two 64 MiB tensors: the old blocks are 126 and 62 MiB
    assert allocator.stranded_bytes(((128 * MIB, 2), (64 * MIB, 2))) == 2 * 128 * MIB + 0
    # the 64 MiB requests are cut from the 126 MiB blocks, so only the 128s need new segments
    assert allocator.stranded_bytes(((64 * MIB, 4),)) == 64 * MIB * 4  # 62 MiB blocks hold none of them
    assert allocator.stranded_bytes(((MIB // 2, 100),)) == 0  # the small pool: not modelled


def test_reserve_terms_by_allocator():
    phases = {"backward start": 100, "optimizer step": 60}
    assert allocator.reserve("expandable", phases, {}, 30, 50, 5) == {}  # nothing strands or splits
    assert allocator.reserve("expandable", phases, {"backward start": 7}) == {"stream_pools": 7}
    assert allocator.reserve("fixed", phases, {}, 30, 0, 5) == {
        "phase_segments": 30,
        "logits_forward_block": 5,
    }
    # the phase segments are free during the forward: the larger of the two, never both
    assert allocator.reserve("fixed", phases, {}, 30, 50) == {"stranded_blocks": 50}


def test_gradients_are_not_live_at_the_start_of_backward():
    """DDP's .grad is allocated during backward (zero_grad sets it to None): the activation peak holds the
    weights, Adam and autocast's copies, not the gradients; the end of backward holds all of them."""
    e = estimate_strategy("ddp", MODEL, Inputs(**H200))
    grads = e.terms["grads.fp32"]
    assert e.peak_phase == "backward start"
    assert e.phases["backward start"] == e.terms["params.fp32"] + 8 * MODEL.num_params + e.activation_bytes
    assert e.phases["optimizer step"] == e.model_state_bytes == 16 * MODEL.num_params
    assert e.phases["backward end"] - e.phases["optimizer step"] < grads  # one layer's tensors left


def test_checkpointing_peaks_at_the_end_of_backward():
    """With checkpointing (H200: 17.72 GiB measured), all the gradients and one recomputed layer."""
    e = estimate_strategy("ddp", MODEL, Inputs(**H200, gradient_checkpointing=True))
    assert e.peak_phase == "backward end"
    assert e.allocated_bytes / GIB == pytest.approx(17.72, rel=0.01)
    assert e.phases["backward start"] < e.phases["backward end"] and "forward end" in e.phases


def test_fsdp2_reduce_scatter_pool():
    """FSDP2's sharded gradients live in the reduce-scatter stream's pool: idle at the start of backward
    (H200, one process: 29.21 GiB allocated, 33.67 reserved)."""
    e = estimate_strategy("fsdp2", MODEL, Inputs(**H200))
    assert e.reserve["stream_pools"] == e.terms["grads.fp32"] + e.buffers["unsharded_grads"]
    assert e.reserved_bytes == e.allocated_bytes + e.reserve["stream_pools"]
    assert "stream_pools" not in estimate_strategy("ddp", MODEL, Inputs(**H200)).reserve


def test_fixed_segments_strand_a_smaller_steps_blocks():
    expandable = estimate_strategy("ddp", MODEL, Inputs(**H200))
    fixed = estimate_strategy("ddp", MODEL, Inputs(**H200, allocator="fixed"))
    assert fixed.allocated_bytes == expandable.allocated_bytes
    # the 128 MiB class (gate, up, silu, product, the mask bias) of 16 layers fits no smaller step's block
    assert fixed.reserve == {"stranded_blocks": 16 * 5 * 128 * MIB}
    same = estimate_strategy("ddp", MODEL, Inputs(**H200, allocator="fixed", tokens_vary=False))
    assert same.reserve == {}


def test_phase_segments_for_zero3_step():
    """ZeRO-3's fp32 sub-group gradient (4 x 1e9 bytes) fits no block backward freed: its own segments."""
    inputs = Inputs(**{**H200, "packing": False, "per_device_train_batch_size": 1, "max_length": 256})
    e = estimate_strategy(
        "zero3", MODEL, Inputs(**{**inputs.__dict__, "allocator": "fixed", "tokens_vary": False})
    )
    assert e.reserve["phase_segments"] == min(
        e.buffers["fp32_grad_subgroup"],
        e.activation_bytes
        + sum(v for k, v in e.buffers.items() if k in ("gathered_params", "unreduced_grad")),
    )


def test_full_loss_logits_block_under_fixed_segments():
    inputs = Inputs(**H200, loss="full", allocator="fixed", tokens_vary=False)
    e = estimate_strategy("zero3", MODEL, inputs)
    assert e.reserve["logits_forward_block"] == 2 * 8192 * 32000  # the bf16 logits, before the upcast


def test_fits_uses_reserved_and_runtime():
    e = estimate_strategy("fsdp2", MODEL, Inputs(**H200, gpu_memory_gb=40))
    assert e.total_bytes == e.reserved_bytes + e.runtime_bytes
    assert e.fits == (e.total_bytes <= 0.9 * 40 * GIB)
    tight = (e.allocated_bytes + e.runtime_bytes) / GIB / 0.9 * 1.001  # allocated fits, reserved does not
    assert not estimate_strategy("fsdp2", MODEL, Inputs(**H200, gpu_memory_gb=tight)).fits


def _replay_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "allocator_replay.py"
    spec = importlib.util.spec_from_file_location("allocator_replay", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_allocator_replay_reproduces_the_h200_fixed_segment_run():
    """docs/memory.md's replay: the grid's own token counts through the allocator's rules give the fixed-segment
    cell's reserve (40.73 GiB measured); constant token counts strand nothing; the closed form's
    stranded_blocks bounds one smaller first step."""
    replay = _replay_module()
    allocated, reserved = replay.replay(replay.GRID_TOKENS[:3], expandable=False)
    assert reserved == pytest.approx(40.73, rel=0.01) and allocated == pytest.approx(33.37, rel=0.01)
    assert replay.replay([8192] * 3, expandable=False)[1] - allocated < 0.2
    expandable = replay.replay(replay.GRID_TOKENS[:3], expandable=True)
    assert expandable[1] - expandable[0] < 0.6
    worst = replay.replay([int(8192 * 0.95), 8192, 8192], expandable=False)
    closed = estimate_strategy("ddp", MODEL, Inputs(**H200, allocator="fixed")).reserve["stranded_blocks"]
    assert worst[1] - worst[0] < closed / GIB
