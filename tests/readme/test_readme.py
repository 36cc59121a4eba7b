"""The READMEs are executable: every command in their fenced ``bash`` blocks runs here as written.

The rules, also stated in the README's *Development* section:

- A line starting with ``$ `` is a transcript: the lines after it, up to the next ``$ `` line or the end of
  the block, are what the command prints today (``...`` stands for any number of lines). The command runs
  and its output (stdout and stderr, as a terminal shows them) must match.
- The other lines of a ``bash`` block run in order in one bash session (``export`` carries over), and the
  block must exit 0. Continuation lines (``\\``) are joined; comment lines are ignored.
- A command that cannot run on these machines (GPUs, a download, a second machine, your own environment)
  says so in its comment: ``[not run by tests: REASON]``. It is checked for, never skipped silently.
- ``accelerate launch`` lines get ``--max_steps 2`` (unless they set ``--max_steps``) and a temporary
  ``--output_dir``: nothing else is changed, so the shipped configs run in their own precision and process
  count. Commands run in a temporary folder that links to the repository's files, so what they write
  (``runs/``, new configs) lands there.

README.md and README.zh-CN.md show the same commands; a block that appears in both runs once.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
READMES = ("README.md", "README.zh-CN.md")
MARKER = re.compile(r"\[not run by tests: ([^\]]+)\]")
# What may keep a command from running here; anything else in a marker is a test failure.
REASONS = (
    "GPUs",
    "a model download",
    "a second machine",
    "your own environment",
    "it runs these tests",
    "a terminal",
)
LINKED = (
    "07_distributed_training.py",
    "accelerate_configs",
    "examples",
    "Makefile",
    ".venv",
    "pyproject.toml",
    "requirements-cuda.txt",
    "requirements-lock.txt",
    "src",
)
SHORT_RUN = ("--max_steps", "2")


@dataclass(frozen=True)
class Block:
    """One fenced ``bash`` block: its commands, and for a transcript the output each one must print."""

    where: str  # "README.md:45"
    commands: tuple[str, ...]  # runnable commands, continuations joined
    expected: tuple[tuple[str, ...], ...] | None  # per command, for a transcript block
    marked: tuple[tuple[str, str], ...]  # (command, reason) not run here

    @property
    def launches(self) -> bool:
        return any("accelerate launch" in c or c.startswith("make demo") for c in self.commands)


def _join_continuations(lines: list[str]) -> list[str]:
    joined, current = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1].rstrip() + " "
            continue
        joined.append(current + line.strip() if current else line)
        current = ""
    return joined


def _split_comment(command: str) -> tuple[str, str]:
    """``cmd  # comment`` -> (cmd, comment); a ``#`` inside quotes is not a comment."""
    quote = None
    for i, char in enumerate(command):
        if char in "'\"" and quote in (None, char):
            quote = None if quote else char
        elif char == "#" and quote is None and (i == 0 or command[i - 1].isspace()):
            return command[:i].rstrip(), command[i + 1 :].strip()
    return command.rstrip(), ""


def parse_blocks(text: str, name: str) -> list[Block]:
    """Every fenced ``bash`` block of a README."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() != "```bash":
            i += 1
            continue
        start, body = i + 1, []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        blocks.append(_block(body, f"{name}:{start}"))
        i += 1
    return blocks


def _block(body: list[str], where: str) -> Block:
    commands, expected, marked = [], [], []
    transcript = any(line.startswith("$ ") for line in body)
    lines = _join_continuations(body)
    for line in lines:
        if transcript and not line.startswith("$ "):
            if expected:
                expected[-1].append(line.rstrip())
            continue
        command, comment = _split_comment(line[2:] if transcript else line)
        if not command:
            continue
        reason = MARKER.search(comment)
        if reason:
            marked.append((command, reason.group(1)))
            if transcript:
                expected.append([])  # its output is not compared
                commands.append(None)
            continue
        commands.append(command)
        expected.append([])
    if transcript:
        pairs = [(c, tuple(e)) for c, e in zip(commands, expected, strict=True) if c is not None]
        return Block(where, tuple(c for c, _ in pairs), tuple(e for _, e in pairs), tuple(marked))
    return Block(where, tuple(commands), None, tuple(marked))


def all_blocks() -> list[Block]:
    """Both READMEs' blocks; a block whose commands and outputs are the same in both runs once."""
    seen, unique = set(), []
    for name in READMES:
        for block in parse_blocks((REPO / name).read_text(encoding="utf-8"), name):
            key = (block.commands, block.expected)
            if block.commands and key not in seen:
                seen.add(key)
                unique.append(block)
    return unique


def _for_test(command: str, output_dir: Path) -> str:
    """A launch line with a short ``--max_steps`` (unless it sets one) and a temporary ``--output_dir``.

    A line that names its ``--output_dir`` gets a temporary folder of that name beside ``output_dir``, so
    the commands of one block that share a folder (a run, then its resume) still share it.
    """
    if "accelerate launch" not in command:
        return command
    extra = [] if "--max_steps" in command else list(SHORT_RUN)
    named = re.search(r"--output_dir[ =](\S+)", command)
    if named:
        folder = output_dir.parent / ("named-" + re.sub(r"[^A-Za-z0-9]+", "-", named.group(1)))
        return " ".join([command.replace(named.group(0), f"--output_dir {folder}"), *extra])
    return " ".join([command, *extra, "--output_dir", str(output_dir)])


def output_matches(expected: tuple[str, ...], actual: list[str]) -> bool:
    """``expected`` line by line, where a ``...`` line stands for any number of lines."""
    pattern = "".join(r"(?:[^\n]*\n)*?" if line == "..." else re.escape(line) + r"\n" for line in expected)
    return (
        re.fullmatch(
            pattern + (r"(?:[^\n]*\n)*" if expected and expected[-1] == "..." else ""),
            "".join(line + "\n" for line in actual),
        )
        is not None
    )


def _workdir(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    for name in LINKED:
        if (REPO / name).exists():
            (work / name).symlink_to(REPO / name)
    return work


def _run(script: str, cwd: Path) -> subprocess.CompletedProcess:
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "COLUMNS": "120",
    }
    return subprocess.run(
        ["bash", "-c", "set -eo pipefail\n" + script],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=900,
    )


BLOCKS = all_blocks()


def _param(block: Block):
    marks = [pytest.mark.readme]
    if block.launches:
        marks.append(pytest.mark.distributed)
    return pytest.param(block, id=block.where, marks=marks)


def test_the_readmes_hold_the_seed_commands_and_mark_what_cannot_run():
    commands = [c for b in BLOCKS for c in b.commands]
    for config in ("multi_gpu_ddp", "deepspeed_zero2", "deepspeed_zero3"):
        seed = f"accelerate launch --config_file accelerate_configs/{config}.yaml 07_distributed_training.py"
        assert seed in commands, f"the seed's command for {config} is no longer in a README block"
    assert sum(b.expected is not None for b in BLOCKS) >= 3, "the README transcripts were not found"
    marked = [
        m
        for name in READMES
        for b in parse_blocks((REPO / name).read_text(encoding="utf-8"), name)
        for m in b.marked
    ]
    assert marked, "no command is marked as not run: the marker syntax changed?"
    for command, reason in marked:
        assert reason in REASONS, f"{command!r}: unknown reason {reason!r} (known: {REASONS})"


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS if b.expected is None])
def test_readme_block_runs(block, tmp_path):
    if any(c.startswith("make ") for c in block.commands) and not (REPO / ".venv" / ".installed").exists():
        pytest.skip("make demo needs the repository's .venv (run the tests through `make test`)")
    work = _workdir(tmp_path)
    script = "\n".join(_for_test(c, tmp_path / f"out{i}") for i, c in enumerate(block.commands))
    result = _run(script, work)
    assert result.returncode == 0, (
        f"{block.where}: exit {result.returncode}\n{script}\n{result.stdout[-6000:]}"
    )
    assert "Traceback" not in result.stdout, f"{block.where}:\n{result.stdout[-6000:]}"


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS if b.expected is not None])
def test_readme_transcript_is_what_the_command_prints(block, tmp_path):
    work = _workdir(tmp_path)
    for i, (command, expected) in enumerate(zip(block.commands, block.expected, strict=True)):
        result = _run(_for_test(command, tmp_path / f"out{i}"), work)
        actual = [line.rstrip() for line in result.stdout.splitlines()]
        assert "Traceback" not in result.stdout, f"{block.where}: {command}\n{result.stdout[-6000:]}"
        shown = "\n".join(expected)
        assert output_matches(expected, actual), (
            f"{block.where}: `{command}` no longer prints what the README shows.\n--- README ---\n{shown}\n"
            f"--- now ---\n" + "\n".join(actual[-80:])
        )


# --- the parser itself ------------------------------------------------------------------------------


def test_parser_reads_transcripts_markers_and_continuations():
    text = "\n".join(
        [
            "```bash",
            "$ disttune plan --num_processes 2 \\",
            "    --per_device_train_batch_size 4",
            "plan  a",
            "...",
            "$ pip install x   # into your env [not run by tests: your own environment]",
            "anything",
            "```",
            "```bash",
            "export A=1   # comment",
            "# a comment line",
            "accelerate launch --config_file c.yaml s.py",
            "```",
            "```",
            "not bash",
            "```",
        ]
    )
    transcript, plain = parse_blocks(text, "R")
    assert transcript.commands == ("disttune plan --num_processes 2 --per_device_train_batch_size 4",)
    assert transcript.expected == (("plan  a", "..."),)
    assert transcript.marked == (("pip install x", "your own environment"),)
    assert (
        plain.commands == ("export A=1", "accelerate launch --config_file c.yaml s.py")
        and plain.expected is None
    )
    assert plain.launches and not transcript.launches
    assert (
        _for_test(plain.commands[1], Path("/t"))
        == "accelerate launch --config_file c.yaml s.py --max_steps 2 --output_dir /t"
    )
    assert (
        _for_test("accelerate launch x.py --max_steps 6", Path("/t"))
        == "accelerate launch x.py --max_steps 6 --output_dir /t"
    )
    assert (
        _for_test(
            "accelerate launch x.py --output_dir runs/elastic --resume_from_checkpoint latest",
            Path("/t/out1"),
        )
        == "accelerate launch x.py --output_dir /t/named-runs-elastic --resume_from_checkpoint latest --max_steps 2"
    )


@pytest.mark.parametrize(
    ("expected", "actual", "ok"),
    [
        (("a", "b"), ["a", "b"], True),
        (("a", "b"), ["a", "b", "c"], False),
        (("a", "...", "c"), ["a", "x", "y", "c"], True),
        (("...", "b", "..."), ["a", "b", "c"], True),
        (("...", "b", "c"), ["a", "b", "x", "c"], False),
        (("a",), ["A"], False),
    ],
)
def test_output_matching_with_ellipsis(expected, actual, ok):
    assert output_matches(expected, actual) is ok
