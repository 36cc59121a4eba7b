"""One failure record: the printed line, the restart record and run_summary.json name the same first failure.

Rank 1 fails at step 6 of the first attempt in three ways (an exception, SIGKILL, a hang: SIGSTOP with
``--hang_dump_s 5``); `disttune launch --max_restarts 1` restarts the job, which heals from checkpoint-4.
Each way must give the same (rank, step, cause) in what was printed, in ``.disttune/restarts.json`` and in
``run_summary.json``'s ``restarts``. SIGKILL runs in CI (tests/distributed/test_elastic.py checks the same
three places for it, in the run the README describes); the exception and the hang are here, in the full tier
(about 1.5 minutes each: the launcher gives a stopped rank 30 s before it kills it).
"""

from __future__ import annotations

import json

import pytest
from launching import explain, read_summary, short_run
from test_elastic import CHECKPOINTED, disttune_launch

from disttune.train.failure import KILLED, STOPPED_ANSWERING

pytestmark = pytest.mark.distributed

CRASH = "RuntimeError: injected crash at step 6 on rank 1 (DISTTUNE_TEST_FAULT)"
SCENARIOS = [
    pytest.param("crash@6:1:0", CRASH, f"disttune: rank 1 failed at step 6: {CRASH}", (), id="exception"),
    pytest.param("sigkill@6:1:0", KILLED, None, (), id="sigkill"),
    pytest.param(
        "sigstop@6:1:0",
        STOPPED_ANSWERING.format(watcher=0),
        f"disttune: rank 1 failed at step 6: {STOPPED_ANSWERING.format(watcher=0)}",
        ("--hang_dump_s", "5"),
        id="hang",
    ),
]


@pytest.mark.full
@pytest.mark.parametrize(("fault", "cause", "printed", "extra"), SCENARIOS)
def test_the_first_failure_is_the_same_in_the_printed_line_the_restart_record_and_the_summary(
    tmp_path, fault, cause, printed, extra
):
    out = tmp_path / "run"
    healed = disttune_launch(out, *short_run(8, *CHECKPOINTED, *extra), max_restarts=1, fault=fault)
    assert healed.returncode == 0, explain(healed)
    expected = {"restart": 1, "failed_in_step": 6, "rank": 1, "cause": cause, "resumed_from": "checkpoint-4"}
    assert read_summary(out)["restarts"] == [expected]
    assert json.loads((out / ".disttune" / "restarts.json").read_text()) == [expected]
    assert f"restart 1 of 1: rank 1 failed in step 6 ({cause}); resuming from checkpoint-4" in healed.stdout
    if printed is not None:
        assert printed in healed.stderr, explain(healed)
