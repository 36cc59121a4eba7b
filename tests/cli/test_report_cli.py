"""`disttune report` in process, on run folders written by the training script's own metrics writer."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from disttune.cli import main

torch = pytest.importorskip("torch")


def fake_run(path, losses, tokens_per_step=1000, run_id="20261202T080845-1c0010", summary=True):
    """A run folder as the training script leaves it: ``MetricsCallback`` writes metrics.jsonl, then
    run_summary.json (the keys ``train.main.fit`` writes that the report reads)."""
    from disttune.run_folder import write_json
    from disttune.train.metrics import MetricsCallback

    path.mkdir(parents=True, exist_ok=True)
    callback = MetricsCallback(str(path), run_id=run_id)
    args = SimpleNamespace(
        device=torch.device("cpu"), world_size=1, max_steps=len(losses), report_to=[], output_dir=str(path)
    )
    state = SimpleNamespace(num_input_tokens_seen=0, is_world_process_zero=True, global_step=0)
    callback.on_train_begin(args, state, None)
    for step, loss in enumerate(losses, 1):
        state.global_step, state.num_input_tokens_seen = step, step * tokens_per_step
        callback.on_log(args, state, None, logs={"loss": loss, "learning_rate": 1e-3, "grad_norm": 1.0})
    if summary:
        write_json(
            path / "run_summary.json",
            {
                "distributed_type": "DEEPSPEED",
                "zero_stage": 2,
                "fsdp_version": None,
                "world_size": 1,
                "global_batch_size": 8,
                "global_step": len(losses),
                "final_loss": callback.losses[-1],
                "tokens_per_second": 1234.5,
                "peak_memory_bytes": [700 * 2**20],
                "peak_memory_kind": "cpu_max_rss",
            },
        )
    return path


def test_one_run_writes_png_and_markdown_beside_it(tmp_path, capsys):
    run = fake_run(tmp_path / "demo", [4.7, 4.2, 3.9])
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    row = "| demo | ZeRO-2 | 1 | 8 | 3 | 3.9000 | 1,234 | 700 MiB (CPU RSS) |"
    assert row in out and row in (run / "report.md").read_text()
    png = (run / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 30_000
    assert f"report: wrote {run / 'report.png'} and {run / 'report.md'}" in out


def test_three_runs_overlaid_into_one_file(tmp_path, capsys):
    runs = [fake_run(tmp_path / name, [4.7 - i / 10, 4.1, 3.6 + i / 10]) for i, name in enumerate("abc")]
    target = tmp_path / "out" / "overlay.png"
    assert main(["report", *map(str, runs), "--output", str(target)]) == 0
    md = (tmp_path / "out" / "overlay.md").read_text()
    assert [
        line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ") and "---" not in line
    ] == ["run", "a", "b", "c"]
    assert "| 3.8000 |" in md and "| 3.6000 |" in md and target.stat().st_size > 30_000
    capsys.readouterr()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: None, "no such folder"),
        (lambda d: d.mkdir(), "no metrics.jsonl in it or in its subfolders"),
        (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text("")), "empty: the run logged no step"),
        (
            lambda d: (fake_run(d, [4.0, 3.0]), (d / "metrics.jsonl").open("a").write('{"step": 3, "lo')),
            "metrics.jsonl, line 3: not valid JSON",
        ),
    ],
)
def test_bad_input_is_one_message_and_exit_1(tmp_path, capsys, make, message):
    run = tmp_path / "run"
    make(run)
    assert main(["report", str(run)]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("disttune report: error: ") and message in captured.err
    assert "Traceback" not in captured.err + captured.out and not (run / "report.png").exists()


def test_output_must_be_a_png_and_a_run_is_required(tmp_path, capsys):
    run = fake_run(tmp_path / "run", [4.0])
    assert main(["report", str(run), "--output", str(tmp_path / "x.svg")]) == 1
    assert "the plot is a PNG" in capsys.readouterr().err
    assert main(["report"]) == 2


def test_summary_numbers_come_from_run_summary_json(tmp_path, capsys):
    run = fake_run(tmp_path / "run", [4.0, 3.5])
    summary = json.loads((run / "run_summary.json").read_text())
    (run / "run_summary.json").write_text(json.dumps({**summary, "tokens_per_second": 98765.4}))
    assert main(["report", str(run)]) == 0
    assert "| 98,765 |" in capsys.readouterr().out
