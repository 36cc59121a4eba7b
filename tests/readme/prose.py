"""What the READMEs' prose names: inline commands, links and paths (read by ``test_readme_prose.py``).

An inline code span (backticks, possibly broken over lines, ``\\|`` inside a table cell read as ``|``) that
starts with one of ``PROGRAMS`` is sorted into one kind:

- ``output``: its second word ends in ``:`` (``disttune launch: rank 1 failed ...``): a quote of what a
  command prints, not a command;
- ``synopsis``: it holds a placeholder: an upper-case word (``CONFIG``, ``RUN_DIR``, ``N``), ``...``, ``[``,
  ``|`` or ``<...>``. It cannot run as written; its command and every option it names must exist;
- ``name``: the program and one command word only (``disttune estimate``, ``accelerate launch``,
  ``make test``): the name of a command, which must exist;
- ``command``: anything else: runnable as written.

A span followed by ``<!-- [not run by tests: REASON] -->`` (an HTML comment: the rendered README does not
show it) carries that marker, as a fenced block's comment does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROGRAMS = ("disttune", "accelerate", "make")
FENCE = re.compile(r"^\s*```")
SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
MARKER_AFTER = re.compile(r"[ \t]*<!--\s*\[not run by tests: ([^\]]+)\]\s*-->")
PLACEHOLDER = re.compile(r"[A-Z][A-Z_]*(?:\.\w+)?")
# Markdown links [text](target) and autolinks <scheme:...>; images are links too.
LINK = re.compile(r"\]\(([^)\s]+)\)|<([a-z][a-z0-9+.-]*:[^>\s]+)>")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


@dataclass(frozen=True)
class Span:
    """One inline code span of a README's prose."""

    where: str  # "README.md:377"
    text: str  # whitespace as Markdown renders it (line breaks are spaces)
    marked: str | None = None  # the reason of a following [not run by tests: REASON] marker

    @property
    def words(self) -> list[str]:
        return self.text.split()

    @property
    def kind(self) -> str | None:
        """``command``, ``name``, ``synopsis``, ``output``, or None for a span that names no program."""
        words = self.words
        if len(words) < 2 or words[0] not in PROGRAMS:
            return None  # not a command, or only the program's name
        if len(words) > 1 and words[1].endswith(":"):
            return "output"
        if any(PLACEHOLDER.fullmatch(t) for t in tokens(self.text)) or re.search(
            r"[\[\]|]|<[^>]*>|\.\.\.", self.text
        ):
            return "synopsis"
        if len(words) == 2 and re.fullmatch(r"[a-z][a-z0-9_-]*", words[1]):
            return "name"
        return "command"


def tokens(text: str) -> list[str]:
    """The words of a synopsis, brackets and alternatives (``[--a N]``, ``NAME|PATH``) taken apart."""
    return [t for t in re.split(r"[\s\[\]|]+", text) if t]


def command_path(span: Span) -> list[str]:
    """``disttune config new --strategy X`` -> ["disttune", "config", "new"]: the words before the first
    option, placeholder or argument that is not a plain lower-case word."""
    path = span.words[:1]
    for word in span.words[1:]:
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", word):
            break
        path.append(word)
    return path


def options(span: Span) -> list[str]:
    """The options a synopsis gives its command: those before ``--`` and before the script (``*.py``)."""
    found = []
    for token in tokens(span.text)[1:]:
        if token == "--" or token.endswith(".py"):
            break
        if token.startswith("-") and token.lstrip("-"):
            found.append(token.split("=", 1)[0])
    return found


def prose(text: str) -> str:
    """``text`` with every fenced block blanked (its lines kept empty, so that line numbers stay)."""
    lines, inside = text.splitlines(), False
    for i, line in enumerate(lines):
        fence = FENCE.match(line) is not None
        if fence or inside:
            lines[i] = ""
        if fence:
            inside = not inside
    return "\n".join(lines)


def spans(text: str, name: str) -> list[Span]:
    """Every inline code span of a README's prose, with the marker that follows it, if any."""
    body = prose(text)
    found = []
    for match in SPAN.finditer(body):
        content = re.sub(r"\s*\n\s*", " ", match.group(2)).replace("\\|", "|")
        if content.startswith(" ") and content.endswith(" ") and content.strip():
            content = content[1:-1]
        marker = MARKER_AFTER.match(body, match.end())
        line = body.count("\n", 0, match.start()) + 1
        found.append(Span(f"{name}:{line}", content, marker.group(1) if marker else None))
    return found


def links(text: str, name: str) -> list[tuple[str, str]]:
    """``(where, target)`` for every Markdown link and autolink in the prose."""
    body = prose(text)
    # Code spans hold no links: blank them (keeping their length) before looking.
    body = SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), body)
    return [
        (f"{name}:{body.count(chr(10), 0, m.start()) + 1}", m.group(1) or m.group(2))
        for m in LINK.finditer(body)
    ]


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a README's headings: lower case, punctuation dropped, spaces -> ``-``."""
    found, seen = set(), {}
    for line in prose(text).splitlines():
        heading = HEADING.match(line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(2).lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


# --- Chinese punctuation --------------------------------------------------------------------------------
# README.zh-CN.md writes full-width punctuation in Chinese text (，：；？！（）“”), ASCII in code and English.
FULL_WIDTH = {",": "，", ":": "：", ";": "；", "?": "？", "!": "！", "(": "（", ")": "）"}
CHINESE = re.compile(r"[\u3000-\u303f\u3400-\u9fff\uff00-\uffef“”…]")
HIDDEN = re.compile(r"`+[^`]*?`+|\]\([^)]*\)|<[a-z][^>\s]*>|<!--.*?-->", re.S)


def _masked(line: str) -> str:
    """``line`` with code spans, link targets, autolinks and HTML comments blanked (same length)."""

    return HIDDEN.sub(lambda m: "\0" * len(m.group(0)), line)


def _neighbour(line: str, index: int, step: int) -> str:
    """The nearest character of text beside ``index``: spaces, emphasis, brackets and code are skipped."""
    index += step
    while 0 <= index < len(line) and line[index] in " *[]\0":
        index += step
    return line[index] if 0 <= index < len(line) else ""


def ascii_in_chinese(line: str) -> list[tuple[int, int]]:
    """Spans ``(start, end)`` of ASCII punctuation that belongs to Chinese text on ``line``.

    Chinese text is where the nearest text on either side is Chinese, or, on a line that holds Chinese, a
    ``,:;`` written the Chinese way, with no space after it (English puts one, or ends the line there):
    ``bf16,AdamW`` is Chinese
    punctuation, ``100,000``, ``Accelerate: <url>`` and ``--a, --b`` are not. A ``(...)`` or ``"..."`` pair
    is Chinese when its content or its nearest text outside is.
    """
    masked, found = _masked(line), []
    if not CHINESE.search(masked):
        return []

    def chinese(char: str) -> bool:
        return bool(char) and CHINESE.match(char) is not None

    for i, char in enumerate(masked):
        if char not in ",:;?!":
            continue
        before, after = masked[i - 1 : i], masked[i + 1 : i + 2]
        if before.isdigit() and after.isdigit():
            continue
        glued = char in ",:;" and after not in (" ", "\0")  # at the line's end too
        if glued or chinese(_neighbour(masked, i, -1)) or chinese(_neighbour(masked, i, 1)):
            found.append((i, i + 1))
    pairs, stack = [], []
    for i, char in enumerate(masked):
        if char == "(":
            stack.append(i)
        elif char == ")" and stack:
            pairs.append((stack.pop(), i))
    quotes = [i for i, char in enumerate(masked) if char == '"']
    pairs += list(zip(quotes[0::2], quotes[1::2], strict=False))
    for start, end in pairs:
        inside = masked[start + 1 : end]
        if (
            CHINESE.search(inside)
            or chinese(_neighbour(masked, start, -1))
            or chinese(_neighbour(masked, end, 1))
        ):
            found.append((start, end + 1))
    return sorted(found)
