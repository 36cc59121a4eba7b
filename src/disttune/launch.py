"""``accelerate launch`` with the checks first: refuse a broken config, then hand over unchanged.

``build_launch_command`` is pure: it returns the exact argv and the environment variables added for the
child, so ``--dry_run`` can print them and tests can assert on them without starting anything.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence

from disttune.errors import UserError

# What --debug turns on in the child: NCCL's own log, accelerate's log, and torch.distributed's
# collective checks (mismatched shapes/ops across ranks are reported instead of hanging).
DEBUG_ENV = {"NCCL_DEBUG": "INFO", "ACCELERATE_LOG_LEVEL": "INFO", "TORCH_DISTRIBUTED_DEBUG": "DETAIL"}
TIMEOUT_FLAG = "--ddp_timeout"  # the collective timeout of transformers' TrainingArguments (seconds)


def script_timeout(script_args: Sequence[str]) -> str | None:
    """The value of ``--ddp_timeout`` in the script's arguments (``--ddp_timeout S`` or ``=S``), if any."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument(TIMEOUT_FLAG, dest="timeout", nargs="?", const="", default=None)
    return parser.parse_known_args(list(script_args))[0].timeout


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


def preflight(config: str, num_processes: int | None = None, script_args: Sequence[str] = ()) -> list:
    """``check_config`` on the config as it will be launched; raises ``UserError`` listing every error."""
    from disttune.config import check_config

    findings = check_config(config, num_processes=num_processes, script_args=list(script_args))
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
