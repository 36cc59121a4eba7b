"""Golden values for the memory model: the ZeRO paper's 7.5B / 64-GPU example and the fp32 stacks."""

from __future__ import annotations

import pytest

from disttune.errors import UserError
from disttune.estimate import memory
from disttune.estimate.recommend import recommend, rule_of_thumb
from disttune.estimate.strategies import GIB, Inputs, ModelInfo, estimate

P, N = 7_500_000_000, 64


def state_gb(strategy, **kw):
    sums = memory.summarize(memory.model_state_breakdown(strategy, P, N, "bf16", **kw))
    return (sums["params"] + sums["grads"] + sums["optimizer"]) / 1e9


@pytest.mark.parametrize(
    "strategy,paper_gb", [("ddp", 120.0), ("zero1", 31.4), ("zero2", 16.6), ("zero3", 1.9)]
)
def test_zero_paper_figure_1(strategy, paper_gb):
    """Rajbhandari et al. 2020, Fig. 1: 7.5B params, 64 GPUs, K=12 (GB = 1e9), within 0.1 GB."""
    assert state_gb(strategy) == pytest.approx(paper_gb, abs=0.1)


def test_zero_paper_exact_formulas():
    assert state_gb("zero1") * 1e9 == pytest.approx(P * (4 + 12 / N), rel=1e-9)
    assert state_gb("zero2") * 1e9 == pytest.approx(P * (2 + 14 / N), rel=1e-9)
    assert state_gb("zero3") * 1e9 == pytest.approx(P * 16 / N, rel=1e-9)
    assert state_gb("fsdp2") * 1e9 == pytest.approx(P * 16 / N, rel=1e-9)


def test_fp32_terms_as_the_stacks_hold_them():
    p, n = 1000, 2
    ddp = memory.model_state_breakdown("ddp", p, n, "no")
    assert ddp == {
        "params.fp32": 4000,
        "params.frozen": 0,
        "grads.fp32": 4000,
        "optim.exp_avg": 4000,
        "optim.exp_avg_sq": 4000,
    }
    z1 = memory.model_state_breakdown("zero1", p, n, "no")
    assert z1 == {
        "params.bit16_flat": 4000,
        "grads.full": 4000,
        "optim.fp32_master_partition": 2000,
        "optim.exp_avg": 2000,
        "optim.exp_avg_sq": 2000,
    }
    z2 = memory.model_state_breakdown("zero2", p, n, "no")
    assert z2["grads.partition"] == 2000 and z2["optim.fp32_master_partition"] == 2000
    z3 = memory.model_state_breakdown("zero3", p, n, "no")
    assert z3["params.partition"] == 2000 and z3["optim.fp32_master_partition"] == 2000  # a clone, measured
    assert sum(memory.model_state_breakdown("fsdp2", p, n, "no").values()) == 16 * p // n


def test_every_term_has_a_source():
    for strategy in memory.STRATEGIES:
        terms = memory.model_state_breakdown(strategy, 10**6, 4, "bf16")
        buffers = memory.buffer_breakdown(
            strategy, 10**6, 4, "bf16", largest_tensor=1000, layer_params=10**4, root_params=10**4
        )
        for key in [*terms, *buffers]:
            assert key in memory.TERM_SOURCES, key


def test_lora_and_8bit():
    t = 10**6
    ddp = memory.model_state_breakdown("ddp", P, 8, "bf16", trainable_params=t)
    # the script loads fp32 and autocasts: DDP keeps the frozen base in fp32 (the H200 LoRA run's 30% miss)
    assert ddp["params.frozen"] == 4 * (P - t) and ddp["params.fp32"] == 4 * t and ddp["grads.fp32"] == 4 * t
    bf16 = memory.model_state_breakdown("ddp", P, 8, "bf16", trainable_params=t, model_dtype="bfloat16")
    assert bf16["params.frozen"] == 2 * (P - t) and bf16["grads.bit16"] == 2 * t
    assert bf16["optim.exp_avg"] == 2 * t  # torch keeps Adam's moments in the weights' dtype
    fsdp2 = memory.model_state_breakdown("fsdp2", P, 8, "bf16", trainable_params=t, model_dtype="bfloat16")
    assert fsdp2["params.frozen"] == 4 * -(-(P - t) // 8)  # accelerate upcasts FSDP2's shards to fp32
    zero2 = memory.model_state_breakdown("zero2", P, 8, "bf16", trainable_params=t)
    assert zero2["params.bit16_flat"] == 2 * P  # DeepSpeed's engine casts the module, frozen base included
    eight = memory.model_state_breakdown("ddp", 2560, 1, "bf16", optimizer="adamw_8bit")
    assert eight["optim.exp_avg"] == 2560 + 4 * 10  # 1 byte each + fp32 absmax per 256-block


def test_offload_moves_optimizer_to_cpu():
    z2o = memory.summarize(memory.model_state_breakdown("zero2_offload", P, N, "bf16"))
    assert z2o["params"] == 2 * P and z2o["grads"] == 0 and z2o["optimizer"] == 0
    assert z2o["cpu"] == pytest.approx(P * 18 / N, rel=1e-6)  # 4 master + 4 fp32 grads + 8 Adam + 2 bit16
    z3all = memory.summarize(
        memory.model_state_breakdown("zero3_offload", P, N, "bf16")
    )  # params + optimizer
    assert z3all["params"] == 0 and z3all["cpu"] == pytest.approx(
        P * 20 / N, rel=1e-6
    )  # 2 params + 2 grads + 4 fp32 grads + 4 master + 8 Adam


def test_buffers_from_deepspeed_defaults():
    z2 = memory.buffer_breakdown("zero2", P, N, "bf16")
    assert z2["ipg_bucket"] == 2 * 500_000_000  # reduce_bucket_size elements in bf16
    assert z2["fp32_grad_partition_at_step"] == 4 * -(-P // N)
    z3 = memory.buffer_breakdown("zero3", P, N, "bf16", largest_tensor=10**8)
    assert z3["gathered_params"] == 2 * (10**8 + 50_000_000)
    assert z3["fp32_grad_subgroup"] == (2 + 4) * -(-P // N)  # the bf16 flatten, then its fp32 copy
    assert z3["unreduced_grad"] == 2 * 10**8  # the largest parameter's bf16 .grad before its reduce-scatter
    assert memory.buffer_breakdown("zero3", P, N, "no", largest_tensor=10**8)["fp32_grad_subgroup"] == 4 * -(
        -P // N
    )
    capped = memory.buffer_breakdown("zero3", 70 * 10**9, 2, "bf16", largest_tensor=2 * 10**9)
    assert capped["gathered_params"] == 2 * 10**9 * 1  # stage3_max_live_parameters = 1e9 elements
    assert memory.buffer_breakdown("ddp", P, 1, "bf16") == {"ddp_reducer_buckets": 0}
    assert memory.buffer_breakdown("ddp", P, 2, "bf16")["ddp_reducer_buckets"] == 4 * P


def _gb(n):
    return n / GIB


def test_fits_uses_ten_percent_headroom():
    model = ModelInfo("x", 10**9)
    states = (
        16 * 10**9 + memory.CUDA_CONTEXT_BYTES
    )  # DDP, 1 GPU: 16 bytes/param, no buffers, the CUDA context
    exact = states / GIB / 0.9
    assert estimate(model, Inputs(num_processes=1, gpu_memory_gb=exact * 1.001), ("ddp",))[0].fits
    assert not estimate(model, Inputs(num_processes=1, gpu_memory_gb=exact * 0.999), ("ddp",))[0].fits


def test_recommendation_fastest_that_fits():
    small = ModelInfo("small", 10**8)
    rec = recommend(estimate(small, Inputs()), small, Inputs())
    assert rec.strategy == "ddp" and "fastest" in rec.reason
    big = ModelInfo("big", 7 * 10**9)
    inputs = Inputs(num_processes=8, gpu_memory_gb=40)
    rec = recommend(estimate(big, inputs), big, inputs)
    assert rec.strategy == "zero2"


def test_recommendation_when_nothing_fits_suggests_more_gpus():
    huge = ModelInfo("huge", 400 * 10**9)
    inputs = Inputs(num_processes=8, gpu_memory_gb=24)
    results = estimate(huge, inputs, ("ddp", "zero2", "zero3", "fsdp2"))
    rec = recommend(results, huge, inputs)
    assert rec.strategy is None and rec.reason.startswith("Nothing fits")
    assert any("GPUs" in s for s in rec.suggestions)


def test_rule_of_thumb_beside_exact():
    thumb = rule_of_thumb(estimate(ModelInfo("x", P), Inputs(num_processes=N)))
    assert thumb["zero2"]["rule_of_thumb"] == 0.30 and thumb["zero3"]["rule_of_thumb"] == 0.50
    assert 0.5 < thumb["zero2"]["exact"] < thumb["zero3"]["exact"] < 1


@pytest.mark.parametrize(
    "bad",
    [
        dict(num_processes=0),
        dict(per_device_train_batch_size=-1),
        dict(gpu_memory_gb=0),
        dict(num_processes=3, num_machines=2),
        dict(mixed_precision="fp8"),
        dict(lora_r=0),
    ],
)
def test_bad_inputs(bad):
    with pytest.raises(UserError):
        estimate(ModelInfo("x", 10**9), Inputs(**bad))


def test_lora_needs_shapes():
    with pytest.raises(UserError, match="--lora_r needs"):
        estimate(ModelInfo("x", 10**9), Inputs(lora_r=8))


def test_runtime_outside_the_allocator():
    assert memory.runtime_breakdown(1) == {"cuda_context": GIB // 2}
    assert memory.runtime_breakdown(8) == {"cuda_context": GIB // 2, "nccl_buffers": GIB // 2}
    r = estimate(ModelInfo("x", 10**9), Inputs(num_processes=8), ("zero2",))[0]
    assert r.runtime_bytes == GIB and r.total_bytes == r.model_state_bytes + r.buffer_bytes + GIB


def test_parameter_offload_only_keeps_the_optimizer_on_the_gpu():
    terms = memory.model_state_breakdown("zero3_offload_params", P, N, "bf16")
    sums = memory.summarize(terms)
    assert sums["cpu"] == 2 * -(-P // N)  # the bf16 parameter partition
    assert sums["grads"] + sums["optimizer"] == 14 * -(-P // N)  # bf16 grads, fp32 master, Adam


def test_offload_gpu_side_matches_deepspeeds_estimator():
    """DeepSpeed charges 4 bytes x the largest layer on the GPU under offload: the gathered 16-bit weight and
    its 16-bit gradient. Ours names both (gathered_params adds the prefetch bucket, which DeepSpeed leaves out)."""
    stage3 = pytest.importorskip("deepspeed.runtime.zero.stage3")
    largest, prefetch = 10**8, 50_000_000
    for strategy, offload_params in (("zero3_offload", True), ("zero3_offload_optimizer", False)):
        terms = memory.summarize(memory.model_state_breakdown(strategy, P, N, "bf16"))
        buf = memory.buffer_breakdown(strategy, P, N, "bf16", largest_tensor=largest)
        ours = terms["params"] + buf["unreduced_grad"] + buf["gathered_params"] - 2 * prefetch
        cpu, gpu = stage3.estimate_zero3_model_states_mem_needs(
            P, largest, N, 1, cpu_offload=True, cpu_offload_params=offload_params, additional_buffer_factor=1
        )[:2]
        assert ours == gpu, strategy
        # host: DeepSpeed's 16 (18 with parameters) bytes/param per node; ours adds the bf16 gradient partition
        assert terms["cpu"] * N == pytest.approx(cpu + 2 * P, rel=1e-6), strategy


def test_peak_phase_is_the_larger_of_backward_and_step():
    # 7B on 2 GPUs under ZeRO-3 with short sequences: the step's fp32 sub-group gradient is the peak
    spec = ModelInfo("x", 7 * 10**9)
    short = estimate(spec, Inputs(num_processes=2), ("zero3",))[0]
    assert short.peak_phase == "optimizer step"
    assert short.buffer_bytes == short.buffers["fp32_grad_subgroup"] + short.buffers["ipg_bucket"]


def test_host_ram_decides_offload_fits():
    model = ModelInfo("70b", 70_553_706_496)
    one = Inputs(num_processes=8, gpu_memory_gb=79.6, host_memory_gb=1024)
    z3o = estimate(model, one, ("zero3_offload_optimizer",))[0]
    assert z3o.gpu_fits and z3o.host_fits is False and not z3o.fits
    assert z3o.cpu_bytes_per_node == 8 * 18 * -(-70_553_706_496 // 8)  # 18 bytes/param on the node
    assert "host RAM per node" in z3o.why and "1024" in z3o.why
    two = estimate(
        model,
        Inputs(num_processes=16, num_machines=2, gpu_memory_gb=79.6, host_memory_gb=1024),
        ("zero3_offload_optimizer",),
    )[0]
    assert two.fits and two.cpu_bytes_per_node == z3o.cpu_bytes_per_node // 2
    unchecked = estimate(model, Inputs(num_processes=8, gpu_memory_gb=79.6), ("zero3_offload_optimizer",))[0]
    assert unchecked.host_fits is None and unchecked.fits


def test_recommendation_says_what_would_fit_when_host_ram_is_short():
    from disttune.estimate.models import count_params
    from disttune.estimate.presets import PRESETS

    spec = PRESETS["meta-llama/Llama-3.1-70B"]
    model = ModelInfo(spec.name, count_params(spec).total, spec)
    inputs = Inputs(num_processes=8, gpu_memory_gb=79.6, host_memory_gb=1024, gradient_checkpointing=True)
    rec = recommend(estimate(model, inputs), model, inputs)
    assert rec.strategy is None and "host RAM" in rec.reason
    text = " ".join(rec.suggestions)
    assert "LoRA" in text and "2 nodes of 8" in text and "without offload" in text


@pytest.mark.parametrize(
    "bad",
    [
        dict(gpu_memory_gb=float("inf")),
        dict(gpu_memory_gb=float("nan")),
        dict(host_memory_gb=0),
        dict(host_memory_gb=float("inf")),
        dict(gradient_checkpointing=True, selective_checkpointing=True),
    ],
)
def test_bad_memory_inputs(bad):
    with pytest.raises(UserError):
        estimate(ModelInfo("x", 10**9), Inputs(**bad))


def test_zero3_gathers_a_moe_block_whole():
    """With the MoE block a ZeRO-3 leaf module, its router and every expert are gathered together."""
    from disttune.estimate.models import count_params, moe_block_params
    from disttune.estimate.presets import PRESETS

    spec = PRESETS["Qwen/Qwen3-30B-A3B"]
    block = moe_block_params(spec)
    assert block == 128 * 2048 + 128 * 2 * 768 * 2048 + 128 * 2048 * 768  # router, gate_up, down
    model = ModelInfo(spec.name, count_params(spec).total, spec)
    z3 = estimate(model, Inputs(num_processes=8), ("zero3",))[0]
    assert z3.buffers["gathered_params"] == 2 * (block + int(0.9 * 2048**2))
    assert z3.buffers["unreduced_grad"] == 2 * count_params(spec).largest_tensor  # one tensor's .grad
