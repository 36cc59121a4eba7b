"""measure.py: storages counted once per category on a live torch model + AdamW; FLOPs and MFU formulas."""

from __future__ import annotations

import pytest
import torch

from disttune.train.measure import (
    StepProbe,
    category_of,
    flops_per_token,
    mfu,
    model_state_snapshot,
    peak_flops,
    totals_of,
)


def _trained(steps: int = 1):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    opt = torch.optim.AdamW(model.parameters())
    for _ in range(steps):
        model(torch.randn(2, 8)).sum().backward()
        opt.step()
    return model, opt


def test_ddp_like_model_states_are_16_bytes_per_param():
    model, opt = _trained()
    n = sum(p.numel() for p in model.parameters())
    t = totals_of(model_state_snapshot(model, opt))
    assert (t["params"], t["grads"]) == (4 * n, 4 * n)
    assert t["optimizer"] == 8 * n + 4 * 4  # exp_avg + exp_avg_sq, plus one fp32 step counter per tensor
    assert t["cpu_bytes"] == t["total"]


def test_views_of_one_storage_count_once():
    model, opt = _trained()
    flat = torch.zeros(100)
    opt.extra_fp32_flat = [flat[:50], flat[50:]]  # two views: one storage, named as a master copy
    t = totals_of(model_state_snapshot(model, opt))
    assert t["sources"]["optimizer:extra_fp32_flat"] == 400


def test_category_from_attribute_names():
    assert category_of("averaged_gradients") == "grads"
    assert category_of("single_partition_of_fp32_groups") == "optimizer"
    assert category_of("ipg_buckets.buffer") == "other"
    assert category_of("state.exp_avg") == "optimizer"


def test_step_probe_takes_the_fullest_moment():
    model, opt = _trained(0)
    probe = StepProbe(model, opt, at_step=2)
    for _ in range(3):
        model(torch.randn(2, 8)).sum().backward()
        opt.step()
    result = probe.result()
    n = sum(p.numel() for p in model.parameters())
    assert result["optimizer_step"] == 2 and result["params"] + result["grads"] == 8 * n


def test_flops_and_mfu():
    assert flops_per_token(1000, 100, 2, 8, 16) == 6 * 900 + 12 * 2 * 8 * 16
    assert peak_flops("NVIDIA H100 PCIe") == 756e12 and peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert (
        peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
        and peak_flops(None) is None
        and peak_flops("cpu") is None
    )
    assert mfu(1000.0, 1e9, 1e12, 2) == pytest.approx(0.5)
    assert mfu(1000.0, 1e9, None, 2) is None


def test_attention_counts_each_packed_document_not_the_flattened_row():
    """Packed, padding-free: 4 documents of 3, 5, 2 and 6 tokens flattened into one row of 16."""
    from disttune.train.metrics import document_square_sum

    lengths = [3, 5, 2, 6]
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    ids = torch.zeros_like(positions)
    assert int(document_square_sum(ids, None, positions)) == 9 + 25 + 4 + 36  # not 16**2 = 256


def test_attention_counts_non_padding_tokens_of_padded_rows():
    from disttune.train.metrics import document_square_sum

    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    ids = torch.zeros_like(mask)
    assert int(document_square_sum(ids, mask)) == 9 + 25
    positions = torch.tensor([[0, 1, 2, 0, 0], [0, 1, 2, 3, 4]])  # a collator that sends both
    assert int(document_square_sum(ids, mask, positions)) == 9 + 25
    assert int(document_square_sum(ids)) == 2 * 25  # no mask: every row is a whole document


def test_the_metrics_hook_gives_mfu_from_per_document_lengths():
    """Through the callback's own forward hook: 2 packed documents of 4 and 12 tokens, s = (16+144)/16 = 10."""
    from types import SimpleNamespace

    from disttune.train.metrics import FLOPS_FORMULA, MetricsCallback

    callback = MetricsCallback("/nonexistent")
    callback.shape = {"num_params": 1000, "embedding_params": 100, "num_layers": 2, "hidden_size": 8}
    module = SimpleNamespace(training=True)
    positions = torch.cat([torch.arange(4), torch.arange(12)]).unsqueeze(0)
    callback._count(module, (), {"input_ids": torch.zeros_like(positions), "position_ids": positions})
    from disttune.train.metrics import _read_counts

    callback._documents_tokens, callback._documents_sq = _read_counts(
        callback._rank_tokens, callback._attention_pairs
    )
    assert callback.attention_context == 10.0
    assert callback.flops_per_token() == 6 * 900 + 12 * 2 * 8 * 10
    assert "sum(s_i^2)/sum(s_i)" in FLOPS_FORMULA and "causal masking not discounted" in FLOPS_FORMULA
