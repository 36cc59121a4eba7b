"""disttune.report on run folders in the exact format the training script writes (a test ties the keys)."""

from __future__ import annotations

import json
import struct
from types import SimpleNamespace

import pytest

from disttune import report
from disttune.errors import UserError
from disttune.train.metrics import read_metrics, tensorboard_scalars

KEYS = (
    "step",
    "epoch",
    "loss",
    "learning_rate",
    "grad_norm",
    "tokens",
    "tokens_per_second",
    "tokens_per_second_per_rank",
    "flops_per_token",
    "mfu",
    "peak_memory_bytes",
    "time",
    "run_id",
)


def record(step: int, loss: float, run_id: str, tps: float = 1000.0, memory: int = 600 * 2**20) -> dict:
    """One metrics.jsonl line as ``MetricsCallback.on_log`` writes it (2 ranks, CPU: no MFU)."""
    return {
        "step": step,
        "epoch": step / 100,
        "loss": loss,
        "learning_rate": 1e-3,
        "grad_norm": 2.5,
        "tokens": 1000,
        "tokens_per_second": tps,
        "tokens_per_second_per_rank": [tps / 2 + 1, tps / 2 - 1],
        "flops_per_token": 4802304,
        "mfu": None,
        "peak_memory_bytes": [memory, memory - 2**20],
        "time": 1796198932.98 + step,
        "run_id": run_id,
    }


def summary(
    distributed_type="MULTI_CPU",
    zero_stage=None,
    steps=4,
    final_loss=4.176915,
    tps=3265.3,
    peaks=(620_777_472, 617_070_592),
) -> dict:
    """The run_summary.json keys the report reads, as ``train.main.fit`` writes them."""
    return {
        "distributed_type": distributed_type,
        "zero_stage": zero_stage,
        "fsdp_version": None,
        "world_size": 2,
        "global_batch_size": 32,
        "global_step": steps,
        "final_loss": final_loss,
        "tokens_per_second": tps,
        "peak_memory_bytes": list(peaks),
        "peak_memory_kind": "cpu_max_rss",
    }


def write_run(path, records, run_summary=None):
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if run_summary is not None:
        (path / "run_summary.json").write_text(json.dumps(run_summary, indent=2))
    return path


def test_fixture_has_exactly_the_keys_the_metrics_callback_writes(tmp_path):
    torch = pytest.importorskip("torch")
    from disttune.train.metrics import MetricsCallback

    callback = MetricsCallback(str(tmp_path), run_id="20261202T080845-1c0010")
    args = SimpleNamespace(
        device=torch.device("cpu"), world_size=1, max_steps=4, report_to=[], output_dir=str(tmp_path)
    )
    state = SimpleNamespace(num_input_tokens_seen=0, is_world_process_zero=True, global_step=0)
    callback.on_train_begin(args, state, None)
    state.global_step, state.num_input_tokens_seen = 1, 512
    callback.on_log(
        args, state, None, logs={"loss": 4.69, "learning_rate": 0.0, "grad_norm": 5.4, "epoch": 0.008}
    )
    (written,) = read_metrics(tmp_path)
    assert tuple(written) == KEYS == tuple(record(1, 4.69, "x"))
    assert (
        written["loss"] == 4.69 and written["tokens"] == 512 and written["peak_memory_bytes"][0] > 10 * 2**20
    )


def test_table_holds_the_summary_numbers(tmp_path):
    ddp = write_run(
        tmp_path / "bench" / "ddp", [record(s, 5.0 - s / 4, "a") for s in (1, 2, 3, 4)], summary()
    )
    z3 = write_run(
        tmp_path / "bench" / "zero3",
        [record(s, 5.0 - s / 4, "b", tps=1801) for s in (1, 2, 3, 4)],
        summary("DEEPSPEED", 3, tps=1801.2, peaks=(681_684_992, 685_260_800)),
    )
    runs = report.load_runs([tmp_path / "bench"])  # a bench folder stands for its strategies
    assert [r.label for r in runs] == ["ddp", "zero3"] and [r.path for r in runs] == [ddp, z3]
    rows = [report.summarize(r) for r in runs]
    assert rows[0] | {"resumed_from": None} == {
        "run": "ddp",
        "strategy": "DDP",
        "world_size": 2,
        "global_batch_size": 32,
        "steps": 4,
        "final_loss": 4.176915,
        "tokens_per_second": 3265.3,
        "peak_memory_bytes": 620_777_472,
        "peak_memory_kind": "cpu_max_rss",
        "resumed_from": None,
        "finished": True,
    }
    assert rows[1]["strategy"] == "ZeRO-3" and rows[1]["peak_memory_bytes"] == 685_260_800
    md = report.render_markdown(runs)
    assert "| ddp | DDP | 2 | 32 | 4 | 4.1769 | 3,265 | 592 MiB (CPU RSS) |" in md
    assert "| zero3 | ZeRO-3 | 2 | 32 | 4 | 4.1769 | 1,801 | 654 MiB (CPU RSS) |" in md


def test_resumed_run_is_split_at_the_resume_point(tmp_path):
    first = [record(s, 5.0 - s / 10, "20261202T080845-1c0010") for s in range(1, 9)]  # killed after step 8
    again = [record(s, 5.0 - s / 10, "20261202T081500-77aa01-from-step4") for s in range(5, 9)]
    (run,) = report.load_runs(
        [write_run(tmp_path / "resumed", first + again, summary(steps=8, final_loss=4.2))]
    )
    assert [(len(s.records), s.resumed_from) for s in run.segments] == [(8, None), (4, 4)]
    assert report.summarize(run)["resumed_from"] == [4]
    assert "- resumed: resumed from step 4; tokens/s is the last launch's." in report.render_markdown([run])
    assert report.segment_labels(run) == ["resumed (DDP, 2 ranks)", "resumed, resumed from step 4"]
    moved = report.load_runs(
        [
            write_run(
                tmp_path / "moved",
                first + again,
                {**summary(), "layout_change": "deepspeed-zero2 x2 -> ddp x1"},
            )
        ]
    )[0]
    assert report.segment_labels(moved) == [
        "moved (deepspeed-zero2 x2)",
        "moved, resumed from step 4 as ddp x1",
    ]


def test_unfinished_run_is_reported_from_its_last_record(tmp_path):
    (run,) = report.load_runs([write_run(tmp_path / "killed", [record(1, 4.7, "a"), record(2, 4.5, "a")])])
    row = report.summarize(run)
    assert (row["steps"], row["final_loss"], row["world_size"], row["tokens_per_second"]) == (2, 4.5, 2, None)
    assert row["peak_memory_bytes"] == 600 * 2**20
    assert "no run_summary.json (the run did not finish)" in report.render_markdown([run])


def test_labels_tell_same_named_folders_apart(tmp_path):
    a = write_run(tmp_path / "a" / "run", [record(1, 4.0, "a")])
    b = write_run(tmp_path / "b" / "run", [record(1, 4.0, "b")])
    assert [r.label for r in report.load_runs([a, b])] == ["a/run", "b/run"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no metrics.jsonl in it or in its subfolders"),
        ("", "empty: the run logged no step"),
        ("\n\n", "empty: the run logged no step"),
        (
            json.dumps(record(1, 4.0, "a")) + "\n" + json.dumps(record(2, 3.9, "a"))[:40] + "\n",
            "line 2: not valid JSON",
        ),
        (json.dumps({"step": 1, "loss": 4.0}) + "\n", "record 1: no tokens_per_second, peak_memory_bytes"),
        ("[1, 2]\n", "record 1: no step, loss"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, content, message):
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        (run / "metrics.jsonl").write_text(content)
    with pytest.raises(UserError, match="fix:") as err:
        report.load_runs([run])
    assert message in str(err.value) and str(run) in str(err.value)


def test_missing_folder_and_broken_summary(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        report.load_runs([tmp_path / "nowhere"])
    run = write_run(tmp_path / "run", [record(1, 4.0, "a")])
    (run / "run_summary.json").write_text('{"world_size": 2,')
    with pytest.raises(UserError, match=r"run_summary.json: not valid JSON"):
        report.load_runs([run])


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_is_a_png_with_every_run_drawn(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    from matplotlib.colors import to_rgb

    runs = []
    for i, name in enumerate(("ddp", "zero2", "zero3")):
        runs.append(
            write_run(
                tmp_path / name,
                [record(s, 5.0 - s / 5 + i / 10, name, tps=1000 * (i + 1)) for s in range(1, 21)],
                summary(),
            )
        )
    resumed = [record(s, 4.5, "r") for s in range(1, 9)] + [
        record(s, 4.4, "r2-from-step4") for s in range(5, 11)
    ]
    runs.append(write_run(tmp_path / "resumed", resumed))
    png, md, markdown = report.write_report(runs, tmp_path / "out" / "report.png")
    assert png_size(png) == (1760, 550) and png.stat().st_size > 40_000
    assert md.read_text() == markdown and markdown.count("\n| ") == 5  # header + 4 runs
    pixels = plt.imread(png)[..., :3].reshape(-1, 3)
    for color in ("C0", "C1", "C2", "C3"):  # each run's colour is on the canvas
        assert (abs(pixels - to_rgb(color)).max(axis=1) < 0.02).sum() > 200, color


def test_tensorboard_scalars_of_a_record():
    tags = tensorboard_scalars(record(3, 4.3, "a", tps=2000.0, memory=600 * 2**20))
    assert tags == {
        "disttune/tokens_per_second": 2000.0,
        "disttune/tokens_per_second/rank0": 1001.0,
        "disttune/tokens_per_second/rank1": 999.0,
        "disttune/peak_memory_MiB/rank0": 600.0,
        "disttune/peak_memory_MiB/rank1": 599.0,
    }  # mfu None on CPU: left out
    assert tensorboard_scalars({**record(3, 4.3, "a"), "mfu": 0.4125})["disttune/mfu"] == 0.4125
