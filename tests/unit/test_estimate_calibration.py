"""``disttune estimate`` against per-GPU memory that others measured on real GPUs and published.

The rows are /work/shared/reference/memory_measurements.md (torchtitan, Qwen, ms-swift), with each source's
own settings. Nothing here is fitted: the estimate's terms each name what allocates the bytes
(docs/memory.md). Two checks: the median of |estimate / measured - 1| is at most 10%, and no wrong call:
where a source ran, the estimate must not need more than the card holds; where it ran out, ``fits`` must
be False (the estimate's own 10% headroom included).
"""

from __future__ import annotations

import importlib.util
import json
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from disttune.estimate.models import ModelSpec, count_params, spec_from_config
from disttune.estimate.presets import PRESETS
from disttune.estimate.strategies import GIB, Inputs, ModelInfo, estimate_strategy

GB = 10**9 / GIB  # the Qwen README writes "G" for GB: 81.0 G on an 80 GiB card can only be 81.0e9 bytes


def _qwen1(name, v, h, i, n, a) -> ModelSpec:
    # Qwen (v1) config.json shapes as the reference gives them: MHA, untied, c_attn = fused q,k,v with bias
    return ModelSpec(name, "qwen", v, h, i, n, a, a, h // a, False, qkv_bias=True, fused_qkv=True)


QWEN_7B = _qwen1("Qwen/Qwen-7B", 151936, 4096, 11008, 32, 32)
QWEN_1_8B = _qwen1("Qwen/Qwen-1_8B", 151936, 2048, 5504, 24, 16)
QWEN_72B = _qwen1("Qwen/Qwen-72B", 152064, 8192, 24576, 80, 64)
LLAMA_8B = PRESETS["meta-llama/Llama-3.1-8B"]
QWEN25_7B = PRESETS["Qwen/Qwen2.5-7B"]
TORCHTITAN = "pytorch/torchtitan docs/performance.md (H100 95 GiB; logs torch.cuda.max_memory_reserved)"
QWEN = "QwenLM/Qwen README.md, Profiling of Memory and Speed (A100-SXM4-80G, flash attention 2)"
SWIFT = "modelscope/ms-swift examples/train/multi-gpu (swift logs torch.cuda.max_memory_reserved)"


@dataclass(frozen=True)
class Row:
    """One published measurement and the setup it was measured under."""

    id: str
    source: str
    spec: ModelSpec
    strategy: str
    num_processes: int
    batch: int
    seq: int
    checkpointing: str  # "full", "selective" or "none"
    measured_gib: float | None  # per GPU; None: the source reports only whether it ran
    measured_as: str  # "reserved" (torch.cuda.max_memory_reserved) or "device" (the whole GPU, nvidia-smi)
    capacity_gib: float
    ran: bool = True
    lora_r: int | None = None
    # how the source's run computes, as far as its code says (docs/memory.md, Calibration)
    loss: str = "full"  # transformers' / torchtitan's loss on the whole logits
    attention: str = "flash_attention_2"  # no mask: flash attention, or SDPA's causal kernel
    allocator: str = "fixed"  # torch's default; torchtitan's launcher sets expandable segments
    tokens_vary: bool = True  # False: every batch padded or cut to the same length
    model_dtype: str = "float32"
    liger: bool = False


ROWS = [
    Row(
        "torchtitan-8gpu",
        f"{TORCHTITAN}, table 1, FSDP row: batch 2, seq 8192, selective op checkpointing",
        LLAMA_8B,
        "fsdp2",
        8,
        2,
        8192,
        "selective",
        82.4,
        "reserved",
        95,
        allocator="expandable",
        tokens_vary=False,
    ),
    Row(
        "torchtitan-128gpu",
        f"{TORCHTITAN}, table 3, FSDP row (16 nodes)",
        LLAMA_8B,
        "fsdp2",
        128,
        2,
        8192,
        "selective",
        67.0,
        "reserved",
        95,
        allocator="expandable",
        tokens_vary=False,
    ),
    Row(
        "torchtitan-32k",
        f"{TORCHTITAN}, table 2, FSDP 8 CP 1: seq 32768, full checkpointing (torch.compile "
        "and float8 linears, not modelled)",
        LLAMA_8B,
        "fsdp2",
        8,
        1,
        32768,
        "full",
        83.9,
        "reserved",
        95,
        allocator="expandable",
        tokens_vary=False,
    ),
    Row(
        "qwen-7b-256",
        f"{QWEN}: Qwen-7B full-parameter, 2 GPUs, 139.2 G total",
        QWEN_7B,
        "zero3",
        2,
        1,
        256,
        "full",
        139.2 / 2 * GB,
        "device",
        80,
        tokens_vary=False,
    ),
    Row(
        "qwen-7b-512",
        f"{QWEN}: 148.0 G total",
        QWEN_7B,
        "zero3",
        2,
        1,
        512,
        "full",
        148.0 / 2 * GB,
        "device",
        80,
        tokens_vary=False,
    ),
    Row(
        "qwen-7b-1024",
        f"{QWEN}: 162.0 G total",
        QWEN_7B,
        "zero3",
        2,
        1,
        1024,
        "full",
        162.0 / 2 * GB,
        "device",
        80,
        tokens_vary=False,
    ),
    Row(
        "qwen-7b-2048",
        f"{QWEN}: not reported, 'due to the limitation of GPU memory'",
        QWEN_7B,
        "zero3",
        2,
        1,
        2048,
        "full",
        None,
        "device",
        80,
        ran=False,
        tokens_vary=False,
    ),
    Row(
        "qwen-1.8b",
        f"{QWEN}: Qwen-1.8B full-parameter, 1 GPU, seq 2048: 43.5 G",
        QWEN_1_8B,
        "zero3",
        1,
        1,
        2048,
        "full",
        43.5 * GB,
        "device",
        80,
        tokens_vary=False,
    ),
    Row(
        "qwen-72b-lora-256",
        f"{QWEN}: Qwen-72B LoRA + ZeRO-3, 4 GPUs: 215.4 G total",
        QWEN_72B,
        "zero3",
        4,
        1,
        256,
        "full",
        215.4 / 4 * GB,
        "device",
        80,
        lora_r=64,
        tokens_vary=False,
    ),
    Row(
        "qwen-72b-lora-8192",
        f"{QWEN}: 289.2 G total",
        QWEN_72B,
        "zero3",
        4,
        1,
        8192,
        "full",
        289.2 / 4 * GB,
        "device",
        80,
        lora_r=64,
        tokens_vary=False,
    ),
    Row(
        "swift-lora-ddp",
        f"{SWIFT}/ddp/train.sh: '27.5GiB * 2', LoRA r=8, short samples",
        QWEN25_7B,
        "ddp",
        2,
        1,
        512,
        "full",
        27.5,
        "reserved",
        80,
        lora_r=8,
        attention="sdpa",
        model_dtype="bfloat16",
    ),
    Row(
        "swift-lora-zero2",
        f"{SWIFT}/deepspeed/train_zero2.sh: '18GiB * 2'",
        QWEN25_7B,
        "zero2",
        2,
        1,
        512,
        "full",
        18.0,
        "reserved",
        80,
        lora_r=8,
        attention="sdpa",
        model_dtype="bfloat16",
    ),
    Row(
        "swift-lora-zero3",
        f"{SWIFT}/deepspeed/train_zero3.sh: '16GiB * 2'",
        QWEN25_7B,
        "zero3",
        2,
        1,
        512,
        "full",
        16.0,
        "reserved",
        80,
        lora_r=8,
        attention="sdpa",
        model_dtype="bfloat16",
    ),
    Row(
        "swift-32b-full",
        "modelscope/ms-swift examples/train/full/qwen2_5_32b.sh: '8 * 80GiB', seq 8192 packed, "
        "liger kernel, flash attention, gradient checkpointing (swift's default)",
        PRESETS["Qwen/Qwen2.5-32B"],
        "zero3",
        8,
        1,
        8192,
        "full",
        None,
        "device",
        80,
        loss="fused",
        liger=True,
    ),
]
# A wrong call kept visible rather than tuned away. Qwen's full-parameter Qwen-7B figures grow 13.7 MB
# per token per GPU from 512 to 1024 tokens; a checkpointed Qwen-7B with flash attention (what the README's
# profile and finetune_ds.sh describe) holds 2.6 MB per token, and the same profile's other Qwen-7B rows
# (LoRA on 1 GPU and on 2 x 2 GPUs) and Qwen-72B LoRA grow 2.1-2.5 MB per token, as checkpointed runs do.
# Only an un-checkpointed run comes near (test_qwen_7b_full_growth_is_unexplained), and no source says it
# ran so. docs/memory.md lists what was checked. Remove it here once a documented setup or a named
# allocation explains it.
KNOWN_WRONG_CALLS = {"qwen-7b-2048"}


def _estimate(row: Row):
    model = ModelInfo(row.spec.name, count_params(row.spec).total, row.spec)
    inputs = Inputs(
        num_processes=row.num_processes,
        per_device_train_batch_size=row.batch,
        max_length=row.seq,
        gradient_checkpointing=row.checkpointing == "full",
        selective_checkpointing=row.checkpointing == "selective",
        lora_r=row.lora_r,
        gpu_memory_gb=row.capacity_gib,
        loss=row.loss,
        attn_implementation=row.attention,
        allocator=row.allocator,
        tokens_vary=row.tokens_vary,
        model_dtype=row.model_dtype,
        use_liger_kernel=row.liger,
    )
    return estimate_strategy(row.strategy, model, inputs)


def _as_measured(row: Row, est) -> float:
    """The estimate in the source's own unit of account, GiB."""
    return (est.reserved_bytes + (est.runtime_bytes if row.measured_as == "device" else 0)) / GIB


def test_qwen1_shapes_match_the_published_totals():
    assert count_params(QWEN_7B).total / 1e9 == pytest.approx(7.72, abs=0.005)
    assert count_params(QWEN_72B).total / 1e9 == pytest.approx(72.29, abs=0.005)


def test_median_error_within_ten_percent():
    ratios = {
        row.id: _as_measured(row, _estimate(row)) / row.measured_gib for row in ROWS if row.measured_gib
    }
    errors = sorted(abs(r - 1) for r in ratios.values())
    print("\n".join(f"{k:20s} estimate/measured = {v:.2f}" for k, v in ratios.items()))
    assert len(errors) == 12
    assert statistics.median(errors) <= 0.10, ratios
    # every row is off by less than half: a term missing for a whole strategy would show here first
    assert max(errors) < 0.5, ratios


def test_no_wrong_call():
    wrong = set()
    for row in ROWS:
        est = _estimate(row)
        if row.ran and est.total_bytes > row.capacity_gib * GIB:  # claims more than the card holds
            wrong.add(row.id)
        if not row.ran and est.fits:  # says it fits where the source ran out
            wrong.add(row.id)
    assert wrong == KNOWN_WRONG_CALLS


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_rows_cite_a_source(row):
    assert row.source.split()[0] in ("pytorch/torchtitan", "QwenLM/Qwen", "modelscope/ms-swift")
    assert (row.measured_gib is None) == (row.id in ("qwen-7b-2048", "swift-32b-full"))


def test_qwen_7b_full_growth_is_unexplained():
    """What keeps ``qwen-7b-2048`` a known wrong call, in numbers (docs/memory.md, *Calibration*).

    The estimate as the source documents the run (full checkpointing, flash attention) grows less than a
    fifth of what Qwen measured per token. Without checkpointing (which finetune_ds.sh contradicts) the three
    rows come within 10% and 2048 tokens does not fit, yet it grows 8.1 of the 13.7 MB per token: no setup
    the sources describe, and no named allocation, accounts for the growth.
    """
    rows = {r.id: r for r in ROWS if r.id.startswith("qwen-7b-")}

    def mb_per_token(gib: dict) -> float:  # growth from 512 to 1024 tokens, per GPU
        return (gib["qwen-7b-1024"] - gib["qwen-7b-512"]) / 512 * GIB / 1e6

    def as_run(checkpointing: str) -> dict:
        rerun = {k: replace(r, checkpointing=checkpointing) for k, r in rows.items()}
        return {k: _as_measured(r, _estimate(r)) for k, r in rerun.items()}

    measured = mb_per_token({k: r.measured_gib for k, r in rows.items()})
    assert measured == pytest.approx(13.7, abs=0.1)
    assert mb_per_token(as_run("full")) < measured / 5
    unchecked = as_run("none")
    ratios = [unchecked[k] / r.measured_gib for k, r in rows.items() if r.measured_gib]
    assert all(abs(x - 1) <= 0.10 for x in ratios), ratios
    assert not _estimate(replace(rows["qwen-7b-2048"], checkpointing="none")).fits
    assert mb_per_token(unchecked) < measured * 2 / 3


def test_qwen_7b_allocator_hypothesis_does_not_close_the_case():
    """Issue 22's hypothesis: the 2048-token run's reserved memory, a fifth over allocated, does not fit.

    Qwen pads every sample to model_max_length: the token count never varies, so the fixed-segment reserve
    the H200 showed (blocks stranded by a smaller earlier step) does not arise, varying or not it is smaller
    than ZeRO-3's phase segments here, and what fixed segments do add is counted: the call still says "fits".
    A flat fifth over allocated contradicts the rows that ran, and grows with allocated memory, not 13.7 MB
    per token (docs/memory.md, *The Qwen-7B wrong call*).
    """
    rows = {r.id: r for r in ROWS if r.id.startswith("qwen-7b-")}
    at_2048 = _estimate(rows["qwen-7b-2048"])
    assert set(at_2048.reserve) == {"phase_segments", "logits_forward_block"}
    assert at_2048.fits and at_2048.total_bytes / GIB == pytest.approx(71.5, abs=0.1)
    varying = _estimate(replace(rows["qwen-7b-2048"], tokens_vary=True))
    assert varying.reserved_bytes == at_2048.reserved_bytes  # the phase segments absorb the stranded blocks
    for short in ("qwen-7b-256", "qwen-7b-512"):
        est = _estimate(rows[short])
        fifth = (1.2 * est.allocated_bytes + est.runtime_bytes) / GIB
        assert fifth > 1.1 * rows[short].measured_gib  # a flat fifth over-predicts the runs that ran


# --- Measured on one H200 by this project (2026-12-04): allocated and reserved, cell by cell -------------
# benchmarks/gpu_1b.py ran the training script on a 1.1B Llama (its SIZES["1b"]), one process, bf16 autocast
# over fp32 weights, packed 2048-token rows, SDPA, fused AdamW; peaks from torch.cuda.max_memory_allocated
# and max_memory_reserved. Its GRID says what each cell changes; the results are committed beside it.
# Acceptance (issue 22): allocated within 5%, reserved within 8%, every cell.
H200_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "h200-2026-12-04"
ALLOCATED_WITHIN, RESERVED_WITHIN = 0.05, 0.08


def _gpu_1b():
    spec = importlib.util.spec_from_file_location("gpu_1b", H200_DIR.parents[1] / "gpu_1b.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GPU_1B = _gpu_1b()
H200_SPEC = spec_from_config({"model_type": "llama", "tie_word_embeddings": False, **GPU_1B.SIZES["1b"]})
# /work/shared/reference/memory_measurements.md, "Measured on one H200": the same runs before expandable
# segments became the default (no PYTORCH_CUDA_ALLOC_CONF: fixed segments), 20 steps, batch 4 x 2048
FIXED_SEGMENT_RUNS = [
    ("ref-ddp", "ddp", {}, 33.42, 41.49),
    ("ref-ddp-second-run", "ddp", {}, 33.42, 40.74),
    ("ref-zero3", "zero3", {}, 33.12, 40.96),
    ("ref-ddp-liger", "ddp", {"use_liger_kernel": True}, 29.30, 35.17),
    ("ref-plain-trl", "ddp", {}, 33.74, 40.73),  # plain TRL SFTTrainer: the same loss and layers
    ("ref-plain-trl-liger", "ddp", {"use_liger_kernel": True}, 29.68, 35.13),
]


def _h200_cells():
    grid = {cell[0]: cell[5] for cell in GPU_1B.GRID}
    cells = []
    for name in ("memory_grid.json", "gpu_1b.json"):
        for run in json.loads((H200_DIR / name).read_text())["runs"]:
            extra = grid[run["label"]] if name == "memory_grid.json" else {}
            label = run["label"] if name == "memory_grid.json" else f"{run['label']}-20-steps"
            gib = (run["peak_allocated_bytes"] / GIB, run["peak_reserved_bytes"] / GIB)
            cells.append((label, run["strategy"], run["seq"], run["batch"], extra, *gib))
    for label, strategy, extra, allocated, reserved in FIXED_SEGMENT_RUNS:
        cells.append((label, strategy, 2048, 4, {**extra, "allocator": "fixed"}, allocated, reserved))
    return cells


H200_CELLS = _h200_cells()


def _h200_estimate(strategy, seq, batch, extra):
    model = ModelInfo(H200_SPEC.name, count_params(H200_SPEC).total, H200_SPEC)
    inputs = Inputs(num_processes=1, per_device_train_batch_size=batch, max_length=seq, packing=True, **extra)
    return estimate_strategy(strategy, model, inputs)


def test_h200_cells_are_all_there():
    assert count_params(H200_SPEC).total == 1_104_218_112  # the runs' num_params
    assert len(H200_CELLS) == 10 + 3 + len(FIXED_SEGMENT_RUNS)


@pytest.mark.parametrize("cell", H200_CELLS, ids=[c[0] for c in H200_CELLS])
def test_h200_allocated_and_reserved(cell):
    label, strategy, seq, batch, extra, allocated, reserved = cell
    est = _h200_estimate(strategy, seq, batch, extra)
    print(
        f"{label:28s} allocated {allocated:6.2f} est {est.allocated_bytes / GIB:6.2f}"
        f" reserved {reserved:6.2f} est {est.reserved_bytes / GIB:6.2f}"
    )
    assert est.allocated_bytes / GIB == pytest.approx(allocated, rel=ALLOCATED_WITHIN)
    assert est.reserved_bytes / GIB == pytest.approx(reserved, rel=RESERVED_WITHIN)
