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


@pytest.mark.parametrize("strategy,paper_gb", [("ddp", 120.0), ("zero1", 31.4), ("zero2", 16.6), ("zero3", 1.9)])
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
    assert ddp == {"params.fp32": 4000, "params.frozen": 0, "grads.fp32": 4000,
                   "optim.exp_avg": 4000, "optim.exp_avg_sq": 4000}
    z1 = memory.model_state_breakdown("zero1", p, n, "no")
    assert z1 == {"params.bit16_flat": 4000, "grads.full": 4000, "optim.fp32_master_partition": 2000,
                  "optim.exp_avg": 2000, "optim.exp_avg_sq": 2000}
    z2 = memory.model_state_breakdown("zero2", p, n, "no")
    assert z2["grads.partition"] == 2000 and z2["optim.fp32_master_partition"] == 2000
    z3 = memory.model_state_breakdown("zero3", p, n, "no")
    assert z3["params.partition"] == 2000 and z3["optim.fp32_master_partition"] == 2000  # a clone, measured
    assert sum(memory.model_state_breakdown("fsdp2", p, n, "no").values()) == 16 * p // n


def test_every_term_has_a_source():
    for strategy in memory.STRATEGIES:
        terms = memory.model_state_breakdown(strategy, 10**6, 4, "bf16")
        buffers = memory.buffer_breakdown(strategy, 10**6, 4, "bf16", largest_tensor=1000, layer_params=10**4,
                                          root_params=10**4)
        for key in [*terms, *buffers]:
            assert key in memory.TERM_SOURCES, key


def test_lora_and_8bit():
    t = 10**6
    ddp = memory.model_state_breakdown("ddp", P, 8, "bf16", trainable_params=t)
    assert ddp["params.frozen"] == 2 * (P - t) and ddp["params.fp32"] == 4 * t and ddp["grads.fp32"] == 4 * t
    eight = memory.model_state_breakdown("ddp", 2560, 1, "bf16", optimizer="adamw_8bit")
    assert eight["optim.exp_avg"] == 2560 + 4 * 10  # 1 byte each + fp32 absmax per 256-block


def test_offload_moves_optimizer_to_cpu():
    z2o = memory.summarize(memory.model_state_breakdown("zero2_offload", P, N, "bf16"))
    assert z2o["params"] == 2 * P and z2o["grads"] == 0 and z2o["optimizer"] == 0
    assert z2o["cpu"] == pytest.approx(P * 18 / N, rel=1e-6)  # 4 master + 4 fp32 grads + 8 Adam + 2 bit16
    z3all = memory.summarize(memory.model_state_breakdown("zero3_offload_all", P, N, "bf16"))
    assert z3all["params"] == 0 and z3all["cpu"] == pytest.approx(P * 20 / N, rel=1e-6)  # 2 params + 2 grads + 4 fp32 grads + 4 master + 8 Adam


def test_buffers_from_deepspeed_defaults():
    z2 = memory.buffer_breakdown("zero2", P, N, "bf16")
    assert z2["ipg_bucket"] == 2 * 500_000_000  # reduce_bucket_size elements in bf16
    assert z2["fp32_grad_partition_at_step"] == 4 * -(-P // N)
    z3 = memory.buffer_breakdown("zero3", P, N, "bf16", largest_tensor=10**8)
    assert z3["gathered_params"] == 2 * (10**8 + 50_000_000)
    assert z3["fp32_grad_subgroup"] == 4 * -(-P // N)
    capped = memory.buffer_breakdown("zero3", 70 * 10**9, 2, "bf16", largest_tensor=2 * 10**9)
    assert capped["gathered_params"] == 2 * 10**9 * 1  # stage3_max_live_parameters = 1e9 elements
    assert memory.buffer_breakdown("ddp", P, 1, "bf16") == {"ddp_reducer_buckets": 0}
    assert memory.buffer_breakdown("ddp", P, 2, "bf16")["ddp_reducer_buckets"] == 4 * P


def test_activation_formula_and_checkpointing():
    kw = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, q_dim=64, kv_dim=32)
    full = memory.activation_bytes(2, 10, mixed_precision="bf16", **kw)
    assert full == 2 * (2 * 10 * 2 * (8 * 64 + 2 * 64 + 2 * 32 + 4 * 128))
    ckpt = memory.activation_bytes(2, 10, mixed_precision="bf16", gradient_checkpointing=True, **kw)
    assert ckpt == 2 * (2 * 10 * 64 * 2) + full // 2
    assert memory.activation_bytes(2, 10, mixed_precision="no", **kw) == 2 * full
    eager = memory.activation_bytes(2, 10, mixed_precision="bf16", num_attention_heads=4, attention="eager", **kw)
    assert eager == full + 2 * 4 * 10 * 10 * 2 * 6
    assert memory.logits_bytes(1, 2048, 1000, "bf16") == 2048 * 1000 * 10


def _gb(n):
    return n / GIB


def test_fits_uses_ten_percent_headroom():
    model = ModelInfo("x", 10**9)
    states = 16 * 10**9  # DDP, 1 GPU: 16 bytes/param, no buffers
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


@pytest.mark.parametrize("bad", [dict(num_processes=0), dict(per_device_train_batch_size=-1),
                                 dict(gpu_memory_gb=0), dict(num_processes=3, num_machines=2),
                                 dict(mixed_precision="fp8"), dict(lora_r=0)])
def test_bad_inputs(bad):
    with pytest.raises(UserError):
        estimate(ModelInfo("x", 10**9), Inputs(**bad))


def test_lora_needs_shapes():
    with pytest.raises(UserError, match="--lora_r needs"):
        estimate(ModelInfo("x", 10**9), Inputs(lora_r=8))
