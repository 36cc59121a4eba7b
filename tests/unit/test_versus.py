"""Ours vs plain TRL (disttune/versus.py): the order alternates, both sides are measured the same way.

The two "runs" here are tiny Python commands that write what each side writes (ours: metrics.jsonl and
trainer_log.jsonl; the peer: clock.jsonl and train_metrics.json) with known numbers; the real scripts run in
`disttune bench --vs_trl` (tests/distributed/test_bench_distributed.py, full tier) and on the GPU check.
"""

from __future__ import annotations

import json
import sys

import pytest

from disttune.versus import compare, steady_rate, summarise

WRITE = """
import json, sys
from pathlib import Path
out, side, seconds_per_step = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)
order = Path(sys.argv[4])
order.write_text(order.read_text() + side + " " if order.exists() else side + " ")
rows = [(step, 1000.0 + step * seconds_per_step, 100) for step in (5, 10, 15, 20)]
if side == "ours":
    with (out / "metrics.jsonl").open("w") as fh:
        for step, time, tokens in rows:
            fh.write(json.dumps({"step": step, "time": time, "tokens": tokens}) + "\\n")
    (out / "trainer_log.jsonl").write_text(json.dumps({"train_runtime": 20 * seconds_per_step, "num_input_tokens_seen": 400}) + "\\n")
else:
    seen = 0
    with (out / "clock.jsonl").open("w") as fh:
        for step, time, tokens in rows:
            seen += tokens
            fh.write(json.dumps({"step": step, "time": time, "tokens": seen}) + "\\n")
    (out / "train_metrics.json").write_text(json.dumps({"train_runtime": 20 * seconds_per_step, "num_input_tokens_seen": 400}))
"""


def test_pairs_alternate_and_the_ratio_is_ours_over_plain(tmp_path):
    script, order = tmp_path / "write.py", tmp_path / "order.txt"
    script.write_text(WRITE)
    speed = {"ours": "0.5", "plain": "1.0"}  # ours twice as fast per step

    def command(side):
        return lambda run_dir: [sys.executable, str(script), str(run_dir), side, speed[side], str(order)]

    data = compare({side: command(side) for side in speed}, tmp_path / "work", 3, 10, log=lambda line: None)
    assert order.read_text().split() == ["ours", "plain", "plain", "ours", "ours", "plain"]
    assert [p["ratio_runtime"] for p in data["pairs"]] == [2.0, 2.0, 2.0]
    assert [p["ratio_steady"] for p in data["pairs"]] == [2.0, 2.0, 2.0]
    assert data["warm_up_pair_left_out"] and data["steady"]["pairs"] == 2  # the first pair left out
    assert json.dumps(data)  # every number is JSON


def test_the_steady_window_starts_at_the_first_log_after_the_warm_up():
    rows = [(5, 100.0, 500), (10, 110.0, 1000), (15, 115.0, 1500), (20, 120.0, 2000)]
    assert steady_rate(rows, 10) == (100.0, "10-20")  # 1000 tokens in 10 s
    assert steady_rate(rows, 20) == (None, None)  # one log: no window
    assert summarise([{"ratio_steady": 1.1}, {"ratio_steady": None}, {"ratio_steady": 0.9}], "steady") == {
        "median": pytest.approx(1.0),
        "min": 0.9,
        "max": 1.1,
        "pairs": 2,
    }
