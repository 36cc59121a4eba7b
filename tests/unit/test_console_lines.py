"""The console: the step line, --verbose, a failure's last lines, and the launcher's report condensed."""

from __future__ import annotations

import warnings
from datetime import timedelta
from types import SimpleNamespace

import pytest

from disttune.errors import UserError
from disttune.launch import ReportFilter, condense_report
from disttune.train import failure
from disttune.train.console import QUIET_WARNINGS, quiet_console, step_line, verbose_requested

# What accelerate launch printed on stderr when rank 1 of 2 crashed (torch 2.13, accelerate 1.15), cut.
CRASH_STDERR = """\
Traceback (most recent call last):
  File "/work/07_distributed_training.py", line 14, in <module>
RuntimeError: injected crash at step 3 on rank 1 (DISTTUNE_TEST_FAULT)
disttune: rank 1 failed at step 3: RuntimeError: injected crash at step 3 on rank 1 (DISTTUNE_TEST_FAULT)
  fix: the traceback above (rank 1) shows where
W1202 11:28:02.763000 19369 torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 19576 closing signal SIGTERM
E1202 11:28:03.882000 19369 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 1) local_rank: 1 (pid: 19577) of binary: /venv/bin/python3
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "/venv/lib/python3.11/site-packages/torch/distributed/launcher/api.py", line 383, in launch_agent
    raise ChildFailedError(
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
07_distributed_training.py FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-02_11:28:03
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 19576)
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-02_11:28:02
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : 1 (pid: 19577)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
"""


def test_step_line_reads_a_metrics_record():
    record = {
        "step": 5,
        "loss": 3.91234,
        "learning_rate": 0.00291,
        "tokens_per_second": 1234.4,
        "peak_memory_bytes": [2**30, 1.2 * 2**30],
    }
    assert step_line(5, 80, record) == "step 5/80  loss 3.912  lr 2.9e-03  1234 tok/s  mem 1.2 GiB"
    assert step_line(5, -1, {"loss": None}) == "step 5  loss nan"


def test_only_the_listed_warnings_are_hidden_on_the_main_process(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_console(verbose=False)
        for message, category, why in QUIET_WARNINGS:
            assert why  # each one says why nobody can act on it
            warnings.warn(f"{message} and more", category, stacklevel=1)
        warnings.warn("`something` is deprecated: set --other instead", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["`something` is deprecated: set --other instead"]


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, False),
        (["--verbose"], {}, True),
        (["--verbose", "--max_steps", "3"], {}, True),
        (["--verbose", "false"], {}, False),
        (["--verbose=true"], {}, True),
        ([], {"DISTTUNE_DEBUG": "1"}, True),
        ([], {"DISTTUNE_DEBUG": "0"}, False),
    ],
)
def test_verbose_from_the_flag_or_the_environment(argv, env, expected):
    assert verbose_requested(argv, env) is expected


def test_the_launcher_report_becomes_one_line_after_the_cause():
    report = ReportFilter()
    shown = report.feed(CRASH_STDERR[:700]) + report.feed(CRASH_STDERR[700:]) + report.finish()
    lines = shown.splitlines()
    assert lines[-3].startswith("disttune: rank 1 failed at step 3: RuntimeError: injected crash")
    assert lines[-2].startswith("  fix: ")
    assert lines[-1].startswith("disttune launch: rank 1 failed first (exit code 1), see its error above")
    assert lines[0] == "Traceback (most recent call last):"  # the rank's own traceback is kept
    assert "ChildFailedError" not in shown and "closing signal" not in shown


def test_a_progress_bar_passes_at_once_and_an_unknown_report_whole():
    report = ReportFilter()
    assert report.feed("\r 40%|####  | 2/5") == "\r 40%|####  | 2/5"
    odd = 'Traceback (most recent call last):\n  File "<frozen runpy>", line 1\nSystemExit: 3\n'
    assert report.feed("\n" + odd) == "\n"
    assert report.finish() == odd
    assert condense_report(
        "Root Cause (first observed failure):\n  rank : 2 (local_rank: 0)\n  exitcode : -9"
    ) == (
        "disttune launch: rank 2 failed first (killed by SIGKILL), see its error above; torch elastic's "
        "full report: --debug or DISTTUNE_DEBUG=1"
    )


def test_accelerates_report_for_one_process_becomes_one_line():
    report = ReportFilter()
    tail = (
        'Traceback (most recent call last):\n  File "<frozen runpy>", line 198, in _run_module_as_main\n'
        "subprocess.CalledProcessError: Command '['/venv/bin/python', 'fail.py']' returned non-zero exit "
        "status 3.\n"
    )
    assert report.feed("the script's own error\n" + tail) == "the script's own error\n"
    assert report.finish().startswith("disttune launch: the script failed (exit code 3), see its error above")


def test_a_crash_names_the_rank_the_step_and_a_fix(monkeypatch, capsys):
    monkeypatch.setattr(failure, "launcher_store", lambda: None)
    monkeypatch.setenv("RANK", "1")
    failure.Where.reset()
    failure.Where.state = SimpleNamespace(global_step=2)
    recorded = failure.report_crash(FileNotFoundError("no such file: /data/x.jsonl"))
    assert capsys.readouterr().err.splitlines()[-2:] == [
        "disttune: rank 1 failed at step 3: FileNotFoundError: no such file: /data/x.jsonl",
        "  fix: check the path and its permissions in the message above",
    ]
    assert (recorded.rank, recorded.step, recorded.secondary) == (1, 3, False)
    failure.Where.reset()


@pytest.fixture
def store():
    from torch.distributed import TCPStore

    return TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=5))


def test_the_first_failure_is_said_once_and_repeated_last_by_the_ranks_that_followed(
    store, monkeypatch, capsys
):
    monkeypatch.setattr(failure, "launcher_store", lambda: store)
    monkeypatch.setenv("WORLD_SIZE", "2")
    failure.Where.reset()
    for rank in ("1", "0"):  # both ranks read the same bad flag; rank 1 first
        monkeypatch.setenv("RANK", rank)
        failure.report_user_error(UserError("--dataset_name x: file not found."), "script.py")
    assert capsys.readouterr().err == "script.py: error: --dataset_name x: file not found.\n"
    first = failure.live_first(store)
    assert (first.rank, first.cause) == (1, "--dataset_name x: file not found.")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # a fresh key: a restarted job starts over
    monkeypatch.setenv("RANK", "1")
    failure.report_user_error(UserError("--dataset_name x: file not found."), "script.py")
    monkeypatch.setenv("RANK", "0")
    failure.report_lost_peer()  # rank 0 stopped after rank 1's error: say it again, last
    assert capsys.readouterr().err.splitlines()[-2:] == [
        "disttune: rank 0 stopped after rank 1 failed first:",
        "script.py: error: --dataset_name x: file not found.",
    ]


def test_elastic_exit_lines_are_recognised_wherever_torch_is_installed():
    from disttune.launch import ELASTIC_EXIT_LINE

    # torch logs its file relative to the working directory: a .venv inside the repository (as `make
    # install` makes it, and CI) puts site-packages in front of the path.
    for prefix in ("", ".venv/lib/python3.11/site-packages/", "/opt/conda/lib/python3.11/site-packages/"):
        line = (
            f"E1202 12:47:51.419000 15080 {prefix}torch/distributed/elastic/multiprocessing/api.py:1002] "
            "failed (exitcode: 1) local_rank: 1 (pid: 15085) of binary: /work/main/.venv/bin/python"
        )
        assert ELASTIC_EXIT_LINE.match(line), prefix
