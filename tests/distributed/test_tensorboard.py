"""``--report_to tensorboard`` under DDP and ZeRO-3 (2 CPU processes): the event files carry transformers'
loss and disttune's own figures (tokens/s in all and per rank, peak memory per rank), equal to
``metrics.jsonl``. Read back with TensorBoard's own ``EventAccumulator``. The same real run then goes
through ``disttune report``.
"""

from __future__ import annotations

import pytest
from launching import explain, launch, read_metrics, read_summary

from disttune.cli import main

pytestmark = pytest.mark.distributed

EventAccumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator"
).EventAccumulator


def scalars(run_dir) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of one TensorBoard run folder."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


@pytest.mark.parametrize(("config", "strategy"), [("multi_gpu_ddp", "DDP"), ("deepspeed_zero3", "ZeRO-3")])
def test_tensorboard_events_match_metrics_jsonl(tmp_path, config, strategy):
    out = tmp_path / config
    result = launch(
        config,
        out,
        "--max_steps",
        "4",
        "--logging_steps",
        "1",
        "--report_to",
        "tensorboard",
        cache_dir=tmp_path / "cache",
    )
    assert result.returncode == 0, explain(result)
    records = read_metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4]

    run_dirs = sorted(p for p in (out / "runs").iterdir() if p.is_dir())
    ours = [p for p in run_dirs if p.name == f"disttune-{records[0]['run_id']}"]
    theirs = [p for p in run_dirs if not p.name.startswith("disttune-")]
    assert len(ours) == 1 and len(theirs) == 1, [p.name for p in run_dirs]
    mine, transformers = scalars(ours[0]), scalars(theirs[0])

    # transformers' own writer still has the loss, at the same steps and values as metrics.jsonl
    assert transformers["train/loss"] == pytest.approx({r["step"]: r["loss"] for r in records}, rel=1e-6)
    expected = {
        "disttune/tokens_per_second": {r["step"]: r["tokens_per_second"] for r in records},
        **{
            f"disttune/tokens_per_second/rank{rank}": {
                r["step"]: r["tokens_per_second_per_rank"][rank] for r in records
            }
            for rank in (0, 1)
        },
        **{
            f"disttune/peak_memory_MiB/rank{rank}": {
                r["step"]: r["peak_memory_bytes"][rank] / 2**20 for r in records
            }
            for rank in (0, 1)
        },
    }
    assert set(mine) == set(expected)  # no disttune/mfu on CPU: its peak FLOP/s is unknown (null in the file)
    for tag, values in expected.items():
        assert all(v > 0 for v in values.values()), (tag, values)
        assert mine[tag] == pytest.approx(values, rel=1e-6), tag  # event files hold float32
    # two ranks really measured separately (a copied value would make these equal)
    assert mine["disttune/tokens_per_second/rank0"] != mine["disttune/tokens_per_second/rank1"]

    # `disttune report` on the same run: one PNG, and a table with run_summary.json's numbers
    summary = read_summary(out)
    assert main(["report", str(out)]) == 0
    assert (out / "report.png").stat().st_size > 30_000
    assert (
        f"| {config} | {strategy} | 2 | {summary['global_batch_size']} | 4 | {summary['final_loss']:.4f} | "
        f"{summary['tokens_per_second']:,.0f} | {max(summary['peak_memory_bytes']) / 2**20:,.0f} MiB (CPU RSS) |"
        in (out / "report.md").read_text()
    )
