"""``accelerate launch`` with the checks first: refuse a broken config, then hand over unchanged.

``build_launch_command`` is pure: it returns the exact argv and the environment variables added for the
child, so ``--dry_run`` can print them and tests can assert on them without starting anything.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence

from disttune.errors import UserError

# What --debug turns on in the child: NCCL's own log, accelerate's log, and torch.distributed's
# collective checks (mismatched shapes/ops across ranks are reported instead of hanging).
DEBUG_ENV = {"NCCL_DEBUG": "INFO", "ACCELERATE_LOG_LEVEL": "INFO", "TORCH_DISTRIBUTED_DEBUG": "DETAIL"}
TIMEOUT_FLAG = "--ddp_timeout"  # the collective timeout of transformers' TrainingArguments (seconds)


def script_arg(script_args: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` in the script's arguments (``--flag V`` or ``--flag=V``; "" when given without
    one), or None when absent."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument(flag, dest="value", nargs="?", const="", default=None)
    return parser.parse_known_args(list(script_args))[0].value


def script_timeout(script_args: Sequence[str]) -> str | None:
    """The value of ``--ddp_timeout`` in the script's arguments (``--ddp_timeout S`` or ``=S``), if any."""
    return script_arg(script_args, TIMEOUT_FLAG)


def with_timeout(script_args: Sequence[str], timeout: int | None) -> list[str]:
    """``script_args`` plus ``--ddp_timeout S`` unless already there with the same value; a different one is refused."""
    script_args = list(script_args)
    if timeout is None:
        return script_args
    given = script_timeout(script_args)
    if given is None:
        return script_args + [TIMEOUT_FLAG, str(timeout)]
    if given.strip() != str(timeout):
        raise UserError(
            f"--timeout {timeout} conflicts with `{TIMEOUT_FLAG} {given}` in the script arguments. "
            f"Keep one of them: drop --timeout, or drop {TIMEOUT_FLAG} after `--`."
        )
    return script_args


def build_launch_command(
    config: str,
    script: str,
    script_args: Sequence[str] = (),
    accelerate_args: Sequence[str] = (),
    debug: bool = False,
    timeout: int | None = None,
    python: str | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The ``accelerate launch`` argv and the environment variables to add for the child.

    ``timeout`` is appended to the script as ``--ddp_timeout S`` unless the script already has the
    same value; a different one is refused. ``debug`` adds ``DEBUG_ENV`` and accelerate's own ``--debug``.
    """
    script_args = with_timeout(script_args, timeout)
    accel = list(accelerate_args) + (["--debug"] if debug and "--debug" not in accelerate_args else [])
    argv = [
        python or sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        config,
        *accel,
        script,
        *script_args,
    ]
    env_updates = dict(DEBUG_ENV) if debug else {}
    return argv, env_updates


def check_before_launch(
    config: str, num_processes: int | None = None, script_args: Sequence[str] = ()
) -> list:
    """``check_config`` on the config as it will be launched; raises ``UserError`` listing every error."""
    from disttune.config import check_config
    from disttune.train.args import compared_flags

    flags = compared_flags(list(script_args)) if script_args else None
    findings = check_config(config, num_processes=num_processes, script_args=flags)
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        lines = [f"refusing to launch: {len(errors)} error(s) in {config}:"]
        for f in errors:
            lines.append(f"  {f.file}: {f.key} = {f.value!r}: {f.message}")
            lines.append(f"    fix: {f.fix}")
        lines.append(f"Fix them (`disttune check {config}` shows them again), then relaunch.")
        raise UserError("\n".join(lines))
    return [f for f in findings if f.severity != "error"]


def shell_line(argv: Sequence[str], env_updates: Mapping[str, str]) -> str:
    """One line to paste into a shell that does the same thing."""
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env_updates.items())
    return (prefix + " " if prefix else "") + shlex.join(argv)


def run_command(argv: Sequence[str], env_updates: Mapping[str, str]) -> int:
    """Run the launcher as a child process and return its exit code (128 + N when killed by signal N)."""
    proc = subprocess.run(list(argv), env={**os.environ, **env_updates}, check=False)
    return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode


# --- the launcher's exit report, condensed --------------------------------------------------------------
# When a rank fails, torch elastic (under accelerate launch) ends the output with its own traceback and a
# ChildFailedError block of 20-30 lines, after the failing rank's error. `disttune launch` keeps the
# rank's error as the last thing said: the report becomes one line naming the rank that failed first.

DEBUG_VAR = "DISTTUNE_DEBUG"  # set (not 0): the launcher's report is shown whole, as with --debug
TRACEBACK = "Traceback (most recent call last):"
# The first frame of the launcher's own traceback (we start it as `python -m accelerate.commands.launch`).
LAUNCHER_FRAMES = (
    "<frozen runpy>",
    "/accelerate/",
    "torch/distributed/run.py",
    "torch/distributed/launcher/",
)
# torch elastic's log lines that belong to the exit report: "failed (exitcode: 1) local_rank: ..." and
# "Sending process N closing signal SIGTERM".
ELASTIC_EXIT_LINE = re.compile(
    r"^[EWI]\d{4} [\d:.]+ +\d+ \S*torch/distributed/elastic/\S+\] (failed \(exitcode|Sending process \d+ closing)"
)
ROOT_CAUSE = re.compile(
    r"Root Cause \(first observed failure\):.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.DOTALL
)


# accelerate's launcher for one process reports a failed script with a CalledProcessError instead.
SCRIPT_FAILED = re.compile(r"CalledProcessError: Command .* returned non-zero exit status (-?\d+)\.")


def condense_report(report: str) -> str | None:
    """One line for torch elastic's ChildFailedError report, or accelerate's CalledProcessError one
    (None when it is neither)."""
    match = ROOT_CAUSE.search(report)
    if match is None:
        single = SCRIPT_FAILED.search(report)
        if single is None:
            return None
        return (
            f"disttune launch: the script failed (exit code {single.group(1)}), see its error above; "
            f"accelerate's full report: --debug or {DEBUG_VAR}=1"
        )
    rank, code = match.group(1), int(match.group(2))
    how = f"exit code {code}"
    if code < 0:
        try:
            how = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return (
        f"disttune launch: rank {rank} failed first ({how}), see its error above; torch elastic's "
        f"full report: --debug or {DEBUG_VAR}=1"
    )


class ReportFilter:
    """Passes the launcher's stderr through as it comes, holding back the launcher's own exit report.

    ``feed`` returns what to print now; ``finish`` what is left, the report condensed to one line
    (``condense_report``) or, when it is not a report this knows, whole. Progress bars (lines redrawn
    with ``\\r``) pass at once; other text a line at a time.
    """

    def __init__(self):
        self.pending = ""  # text of a line not yet passed on
        self.mid_line = False  # the start of the current line was already passed on
        self.traceback: str | None = None  # a "Traceback" line waiting for its first frame
        self.report: list[str] | None = None  # the launcher's report, once it began
        self.exit_lines: list[str] = []

    def feed(self, text: str) -> str:
        out: list[str] = []
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            self._line(line + "\n", out)
        if self.pending and "\r" in self.pending and self.report is None and self.traceback is None:
            out.append(self.pending)
            self.pending, self.mid_line = "", True
        return "".join(out)

    def _line(self, line: str, out: list[str]) -> None:
        if self.report is not None:
            self.report.append(line)
        elif self.mid_line:
            out.append(line)
            self.mid_line = False
        elif self.traceback is not None:
            if any(frame in line for frame in LAUNCHER_FRAMES):
                self.report = [self.traceback, line]
            else:
                out += [self.traceback, line]
            self.traceback = None
        elif line.strip() == TRACEBACK:
            self.traceback = line
        elif ELASTIC_EXIT_LINE.match(line):
            self.exit_lines.append(line)
        else:
            out.append(line)

    def finish(self) -> str:
        rest = (self.traceback or "") + "".join(self.report or []) + self.pending
        line = condense_report(rest) if self.report else None
        if line is None:
            return "".join(self.exit_lines) + rest
        return line + "\n"


def run_launcher(argv: Sequence[str], env_updates: Mapping[str, str], condense: bool = True) -> int:
    """``run_command``, with the launcher's exit report condensed (``ReportFilter``) unless ``condense``
    is off or ``DISTTUNE_DEBUG`` is set; the child's stdout is left alone."""
    if not condense or os.environ.get(DEBUG_VAR, "").strip() not in ("", "0"):
        return run_command(argv, env_updates)
    import codecs

    proc = subprocess.Popen(list(argv), env={**os.environ, **env_updates}, stderr=subprocess.PIPE)
    decoder, report = codecs.getincrementaldecoder("utf-8")(errors="replace"), ReportFilter()
    while True:
        try:
            chunk = os.read(proc.stderr.fileno(), 65536)
        except KeyboardInterrupt:  # Ctrl-C reached the launcher too: let it stop the ranks, keep reading
            continue
        sys.stderr.write(report.feed(decoder.decode(chunk, final=not chunk)))
        sys.stderr.flush()
        if not chunk:
            break
    sys.stderr.write(report.finish())
    sys.stderr.flush()
    code = proc.wait()
    return code if code >= 0 else 128 - code
