"""The READMEs' prose holds up too: its inline commands, its links, the defaults it states.

The rules (also stated in the README's *Development* section; ``prose.py`` sorts the spans):

- Every inline (backticked) ``disttune ...``, ``accelerate ...`` or ``make ...`` **command** runs here as
  written, as a fenced block's line does (exit 0, no traceback), unless a fenced block holds the same
  command (it runs there, or is marked there) or the span is followed by
  ``<!-- [not run by tests: REASON] -->`` with one of ``test_readme.REASONS``.
- A **name** (``disttune estimate``, ``accelerate launch``, ``make test``) must be a command that exists:
  ``PROG NAME --help`` exits 0, ``make --dry-run NAME`` knows the target.
- A **synopsis** (``disttune check CONFIG -- SCRIPT ARGS``) cannot run as written: its command must exist,
  every option it names must be one its ``--help`` lists, and unless it leaves things out (``...``) it
  names every option the command requires.
- No link or backticked path leaves the repository (a clone has nothing outside it); a relative link names
  a file of the repository, an anchor a heading of the README it points into; a backticked path under
  one of the repository's own folders names a file that exists.
- The defaults that matter, stated in both READMEs, are the ones the code has (read from the code).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from prose import SPAN, anchors, ascii_in_chinese, command_path, links, options, prose, spans
from test_readme import READMES, REASONS, REPO, _run, _workdir, parse_blocks

pytestmark = pytest.mark.readme

TEXTS = {name: (REPO / name).read_text(encoding="utf-8") for name in READMES}
SPANS = [s for name, text in TEXTS.items() for s in spans(text, name) if s.kind]
FENCED = {c for name, text in TEXTS.items() for b in parse_blocks(text, name) for c in b.commands} | {
    c for name, text in TEXTS.items() for b in parse_blocks(text, name) for c, _ in b.marked
}


def _unique(kind: str) -> list:
    """One span per distinct text (README.md and README.zh-CN.md name the same commands)."""
    seen, out = set(), []
    for span in SPANS:
        if span.kind == kind and span.text not in seen:
            seen.add(span.text)
            out.append(span)
    return out


COMMANDS = [s for s in _unique("command") if s.marked is None and s.text not in FENCED]


@functools.cache
def _help(path: tuple[str, ...]) -> tuple[int, str]:
    result = _run(shlex.join([*path, "--help"]), REPO)
    return result.returncode, result.stdout


@pytest.mark.parametrize("span", [pytest.param(s, id=s.where) for s in COMMANDS])
def test_inline_command_runs_as_written(span, tmp_path):
    result = _run(span.text, _workdir(tmp_path))
    assert result.returncode == 0 and "Traceback" not in result.stdout, (
        f"{span.where}: `{span.text}` exits {result.returncode} as the README writes it. Fix the command, "
        f"or follow it with <!-- [not run by tests: REASON] -->.\n{result.stdout[-3000:]}"
    )


@pytest.mark.parametrize("span", [pytest.param(s, id=s.where) for s in _unique("name")])
def test_inline_name_is_a_command(span):
    program, name = span.words
    if program == "make":
        result = _run(f"make --dry-run {shlex.quote(name)} >/dev/null", REPO)
        assert result.returncode == 0, f"{span.where}: the Makefile has no target {name!r}\n{result.stdout}"
        return
    code, text = _help((program, name))
    assert code == 0, (
        f"{span.where}: `{program} {name} --help` exits {code}: no such command?\n{text[-2000:]}"
    )


@pytest.mark.parametrize("span", [pytest.param(s, id=s.where) for s in _unique("synopsis")])
def test_inline_synopsis_names_real_options(span):
    path = tuple(command_path(span))
    code, text = _help(path)
    assert code == 0, f"{span.where}: `{' '.join(path)} --help` exits {code}\n{text[-2000:]}"
    unknown = [o for o in options(span) if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", text)]
    assert not unknown, f"{span.where}: `{span.text}`: {' '.join(path)} has no option {unknown}"
    if "..." not in span.text:  # a synopsis that leaves nothing out names what the command requires
        missing = [o for o in required_options(text) if o not in options(span)]
        assert not missing, f"{span.where}: `{span.text}` leaves out {missing}, which {path[-1]} requires"


def required_options(help_text: str) -> list[str]:
    """The options argparse's usage line shows outside brackets: the required ones."""
    usage = help_text.split("\n\n", 1)[0]
    while re.search(r"\[[^\[\]]*\]", usage):
        usage = re.sub(r"\[[^\[\]]*\]", "", usage)
    return re.findall(r"(?<![\w-])--[\w-]+", usage)


def test_every_inline_command_is_run_or_marked():
    """The bookkeeping: markers give known reasons and sit on commands; each kind is still found."""
    kinds = {s.kind for s in SPANS}
    assert {"command", "name", "synopsis"} <= kinds, f"the inline spans were not found: {kinds}"
    for span in SPANS:
        if span.marked is not None:
            assert span.kind == "command", f"{span.where}: a marker on a {span.kind}, which never runs"
            assert span.marked in REASONS, f"{span.where}: unknown reason {span.marked!r} ({REASONS})"
    for name in READMES:  # a marker that no span precedes would be silently ignored
        written = SPAN.sub("", prose(TEXTS[name])).count("<!-- [not run by tests:")
        found = sum(s.marked is not None for s in spans(TEXTS[name], name))
        assert written == found, f"{name}: {written - found} marker(s) do not follow an inline command"


def _leaves(target: str, readme: Path) -> bool:
    path = (readme.parent / target).resolve()
    return target.startswith("/") or not path.is_relative_to(REPO.resolve())


def _tracked_top_level() -> set[str]:
    """The top-level names a clone has: git's tracked files (the folder's own listing without git)."""
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return {p.name for p in REPO.iterdir() if not p.name.startswith(".")}
    return {line.split("/", 1)[0] for line in listed.stdout.splitlines()}


@pytest.mark.parametrize("name", READMES)
def test_no_link_leaves_the_repository(name):
    readme, problems = REPO / name, []
    for where, target in links(TEXTS[name], name):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # a web address
        file, _, anchor = target.partition("#")
        if file and _leaves(file, readme):
            problems.append(f"{where}: {target} is outside the repository: a clone does not have it")
        elif file and not (readme.parent / file).exists():
            problems.append(f"{where}: {target}: no such file in the repository")
        elif anchor:
            linked = (readme.parent / file) if file else readme
            if anchor not in anchors(linked.read_text(encoding="utf-8")):
                problems.append(f"{where}: {target}: no heading of {linked.name} has that anchor")
    own = _tracked_top_level()  # not runs/ or .venv/, which a user's make demo or make install leave here
    for span in spans(TEXTS[name], name):
        text = span.text
        if " " in text or "/" not in text:
            continue
        if text.startswith("../"):
            problems.append(f"{span.where}: `{text}` is outside the repository: a clone does not have it")
        elif text.split("/", 1)[0] in own and not glob.glob(str(REPO / text)):
            problems.append(f"{span.where}: `{text}`: no such file in the repository")
    assert not problems, "\n".join(problems)


# --- the defaults the READMEs state ---------------------------------------------------------------------

# Script defaults that differ from TRL's own and need no row in the README's table, with the reason.
NOT_STATED = {
    "bf16": "the precision comes from the launch (mixed_precision), as the README says",
    "dataloader_drop_last": "drops at most one partial batch per epoch (disttune plan --dataloader_drop_last)",
    "include_num_input_tokens_seen": "only feeds the tokens/s the script logs",
    "ddp_find_unused_parameters": "a speed setting no model here needs on",
}
OFF, NONE = ("off", "关闭"), ("none", "无")


def _cells(row: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", row.strip().strip("|"))]


def script_table(text: str) -> tuple[dict[str, str | bool | None], set[str]]:
    """From the README's table of the script's arguments (the one with a "default" column): each row's
    first flag -> its stated default, and every flag the first column names."""
    lines, stated, listed = text.splitlines(), {}, set()
    for i, line in enumerate(lines):
        cells = _cells(line) if line.startswith("|") else []
        if len(cells) < 3 or cells[1] not in ("default", "默认值"):
            continue
        for row in lines[i + 2 :]:
            if not row.startswith("|"):
                break
            first, default = _cells(row)[:2]
            spans_ = [s for s in re.findall(r"`([^`]+)`", first) if s.startswith("--")]
            listed |= {w for s in spans_ for w in s.split() if w.startswith("--")}
            if default.startswith("transformers"):
                continue  # the library's own defaults
            values = re.findall(r"`([^`]+)`", default) or [
                False if default in OFF else None if default in NONE else default
            ]
            assert len(values) == len(spans_), f"{row}: {len(spans_)} flags, {len(values)} defaults"
            stated.update(zip((s.split()[0] for s in spans_), values, strict=True))
    return stated, listed


def _same(stated, actual) -> bool:
    actual = getattr(actual, "value", actual)  # transformers' enums
    if stated is None or isinstance(stated, bool) or isinstance(actual, bool):
        return stated == actual
    try:
        return float(stated) == float(actual)
    except (TypeError, ValueError):
        return str(stated) == str(actual)


@pytest.mark.parametrize("name", READMES)
def test_the_readme_states_the_script_defaults_the_script_has(name):
    from trl import ModelConfig, SFTConfig

    from disttune.train.args import SCRIPT_DEFAULTS, DisttuneArguments, parse_args

    stated, listed = script_table(TEXTS[name])
    assert stated, f"{name}: the table of the script's arguments (with a default column) was not found"
    script_args, training_args, model_args = parse_args([])
    wrong = []
    for flag, value in stated.items():
        key = flag[2:]
        if key == "config":  # TRL's parser option (a recipe file), not a field: no default
            assert value is None, f"{name}: --config has no default"
            continue
        owner = next((a for a in (script_args, training_args, model_args) if hasattr(a, key)), None)
        assert owner is not None, f"{name}: the table names {flag}, which the training script does not have"
        if not _same(value, getattr(owner, key)):
            wrong.append(f"{flag}: the README says {value!r}, the script has {getattr(owner, key)!r}")
    assert not wrong, f"{name}: " + "; ".join(wrong)
    # Every default the script sets otherwise than TRL is stated (or excused in NOT_STATED) ...
    library = {f.name: f for cls in (SFTConfig, ModelConfig) for f in dataclasses.fields(cls)}
    for key, value in SCRIPT_DEFAULTS.items():
        field = library[key]
        theirs = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        if theirs != value and key not in NOT_STATED:
            assert f"--{key}" in stated, (
                f"{name}: the script's --{key} defaults to {value!r} (TRL's to {theirs!r}); the table must say so"
            )
    # ... and every option of the script's own that the README names is in the table.
    named = {w for s in spans(TEXTS[name], name) for w in s.words if w.startswith("--")}
    for field in dataclasses.fields(DisttuneArguments):
        flag = f"--{field.name}"
        if field.init and flag in named:
            assert flag in listed, f"{name}: the README names {flag} but its table of arguments does not"


def test_the_chinese_readme_writes_chinese_punctuation():
    """Full-width punctuation in Chinese text, ASCII in code and English: never both in one sentence."""
    text, wrong = TEXTS["README.zh-CN.md"], []
    for number, line in enumerate(prose(text).splitlines(), 1):
        for start, end in ascii_in_chinese(line):
            wrong.append(f"README.zh-CN.md:{number}: {line[max(0, start - 8) : end + 8]!r}")
    assert not wrong, "ASCII punctuation in Chinese text (write ，：；？！（）“”):\n" + "\n".join(wrong)


# --- the prose parser itself ----------------------------------------------------------------------------


def test_prose_parser_reads_spans_markers_links_and_kinds():
    text = "\n".join(
        [
            "# A title: here",
            "Run `disttune plan --num_processes 1 --global_batch_size 8",
            "--per_device_train_batch_size 4` <!-- [not run by tests: GPUs] --> or `disttune estimate`;",
            "| `disttune estimate --model NAME\\|PATH` | `disttune launch: rank 1 failed` |",
            "```bash",
            "`disttune plan` in a block is not prose",
            "```",
            "See [the title](#a-title-here), [x](../outside.md), <https://example.org> and `make test`.",
        ]
    )
    found = [(s.where, s.text, s.kind, s.marked) for s in spans(text, "R") if s.kind]
    assert found == [
        (
            "R:2",
            "disttune plan --num_processes 1 --global_batch_size 8 --per_device_train_batch_size 4",
            "command",
            "GPUs",
        ),
        ("R:3", "disttune estimate", "name", None),
        ("R:4", "disttune estimate --model NAME|PATH", "synopsis", None),
        ("R:4", "disttune launch: rank 1 failed", "output", None),
        ("R:8", "make test", "name", None),
    ]
    synopsis = spans(text, "R")[2]
    assert command_path(synopsis) == ["disttune", "estimate"] and options(synopsis) == ["--model"]
    assert links(text, "R") == [
        ("R:8", "#a-title-here"),
        ("R:8", "../outside.md"),
        ("R:8", "https://example.org"),
    ]
    assert anchors(text) == {"a-title-here"}
    assert _leaves("../outside.md", REPO / "README.md") and not _leaves("docs/memory.md", REPO / "README.md")


@pytest.mark.parametrize(
    ("line", "wrong"),
    [
        ("全量微调，bf16，AdamW，8 个 GPU。", []),
        ("全量微调,bf16,AdamW。", [",", ","]),
        ("见下文(`x`)。", ["(`x`)"]),
        ('原说明称为"线性缩放规则"的公式', ['"线性缩放规则"']),
        ("超过 100,000 个值；`a, b: c` 不算", []),
        ("- Accelerate: <https://x.org> (docs)", []),
        ("| `--a`, `--b` | RTX 4090 (24 GB) |", []),
        ("脚本把 gloo 后端交给 accelerate;", [";"]),
    ],
)
def test_chinese_punctuation_rule(line, wrong):
    assert [line[a:b] for a, b in ascii_in_chinese(line)] == wrong
