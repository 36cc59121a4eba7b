"""Read YAML or JSON text from anywhere, bounded in size, depth, alias expansion and time.

A config is text from anywhere. PyYAML's composer recurses once per nesting level (5,000 levels end in a
``RecursionError``), lets an alias point into the collection that holds it (``a: &a [*a, *a]`` builds a
cycle that every later walk follows forever), and shares aliased values, so a few hundred bytes of
"billion laughs" expand to 9**9 values for anything that walks them. Every reader of a config goes
through ``parse_text`` and is refused, with one line saying what and where, long before any of that.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

import yaml

MAX_BYTES = 256 * 1024  # the largest real config we know of is ~10 KB
MAX_DEPTH = 64  # real configs nest 3-5 levels
MAX_VALUES = 100_000  # values after every alias is expanded
MAX_SECONDS = 0.5


class Refused(ValueError):
    """The text is not read: too large, too deep, too many values after alias expansion, or too slow."""


@dataclass(frozen=True)
class Parsed:
    """What was read: the value, the syntax it was read as, and keys written twice in one mapping.

    Attributes:
        data: the loaded value (a dict for any usable config).
        syntax: ``"json"`` or ``"yaml"``.
        repeated: ``(dotted key path, 1-based line or None, same)`` for every key repeated in one mapping;
            ``same`` is whether the repetition has the value already given (then nothing is lost).
        json_error: why the text, which starts like JSON, is not JSON (it was read as YAML instead): a
            consumer that reads JSON only (DeepSpeed, accelerate for ``.json``) would fail on it.
    """

    data: object
    syntax: str
    repeated: tuple[tuple[str, int | None, bool], ...] = ()
    json_error: str | None = None


def check_size(text: str, where: str) -> None:
    """Refuse text larger than ``MAX_BYTES``."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise Refused(
            f"{where}: refused: {size:,} bytes is more than a config can be ({MAX_BYTES // 1024} KiB); "
            "is this the right file?"
        )


class _BoundedLoader(yaml.SafeLoader):
    """A safe loader whose composer counts depth and expanded values and refuses alias cycles."""

    def __init__(self, text: str, where: str):
        super().__init__(text)
        self.where = where
        self.depth = 0
        self.open_anchors: set[str] = set()
        self.sizes: dict[int, int] = {}
        self.deadline = time.monotonic() + MAX_SECONDS
        self.calls = 0

    def _refuse(self, event, what: str):
        line = event.start_mark.line + 1 if event.start_mark is not None else "?"
        raise Refused(f"{self.where}:{line}: refused: {what}")

    def compose_node(self, parent, index):
        event = self.peek_event()
        self.calls += 1
        if self.calls % 256 == 0 and time.monotonic() > self.deadline:
            self._refuse(event, f"reading took longer than {MAX_SECONDS:g} s")
        if isinstance(event, yaml.AliasEvent) and event.anchor in self.open_anchors:
            self._refuse(event, f"alias *{event.anchor} points into the collection that holds it (a cycle)")
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            if self.depth >= MAX_DEPTH:
                self._refuse(
                    event, f"nested more than {MAX_DEPTH} levels deep (a config needs fewer than 10)"
                )
            self.depth += 1
            if event.anchor:
                self.open_anchors.add(event.anchor)
            try:
                node = super().compose_node(parent, index)
            finally:
                self.depth -= 1
                self.open_anchors.discard(event.anchor)
        else:
            node = super().compose_node(parent, index)
        size = self._size(node)
        if size > MAX_VALUES:
            self._refuse(
                event, f"its aliases expand to more than {MAX_VALUES:,} values (a 'billion laughs' file?)"
            )
        return node

    def _size(self, node) -> int:
        """Values in ``node`` with every alias expanded (children are already sized)."""
        known = self.sizes.get(id(node))
        if known is not None:
            return known
        if isinstance(node, yaml.MappingNode):
            size = 1 + sum(self.sizes.get(id(k), 1) + self.sizes.get(id(v), 1) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self.sizes.get(id(item), 1) for item in node.value)
        else:
            size = 1
        self.sizes[id(node)] = size
        return size


def _node_value(node) -> object:
    """The value a (bounded, already composed) node constructs to, on its own."""
    return yaml.constructor.SafeConstructor().construct_document(node)


def _yaml_repeated(root) -> list[tuple[str, int | None, bool]]:
    found: list[tuple[str, int | None, bool]] = []
    seen_nodes: set[int] = set()
    stack = [(root, "")]
    while stack:
        node, prefix = stack.pop()
        if id(node) in seen_nodes:  # an alias: its keys were looked at where it was defined
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, object] = {}
            for key_node, value_node in node.value:
                key = str(key_node.value)
                path = f"{prefix}.{key}" if prefix else key
                if key in first:
                    same = _node_value(first[key]) == _node_value(value_node)
                    found.append((path, key_node.start_mark.line + 1, same))
                else:
                    first[key] = value_node
                stack.append((value_node, path))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{prefix}[{i}]") for i, item in enumerate(node.value))
    return sorted(found, key=lambda item: item[1] or 0)


def parse_yaml(text: str, where: str) -> Parsed:
    """Safe-load YAML within the bounds; ``Refused`` past them, ``yaml.YAMLError`` for invalid YAML."""
    check_size(text, where)
    # PyYAML's scanner looks ahead across every open "[" / "{" (quadratic in the flow depth) before the
    # composer sees the first node, so flow nesting is counted on the raw text first.
    _refuse_deep(_YAML_TOKENS, text, where)
    loader = _BoundedLoader(text, where)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except RecursionError:  # cannot happen within MAX_DEPTH; kept so that nothing escapes as a traceback
        raise Refused(f"{where}: refused: nested too deeply to read") from None
    finally:
        loader.dispose()
    return Parsed(data, "yaml", tuple(_yaml_repeated(root)) if root is not None else ())


_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')
# Brackets outside quoted strings and comments (an upper bound of YAML's flow nesting).
_YAML_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\']|\'\')*\'|#[^\n]*|[\[\]{}]')


class _Object(dict):
    """A JSON object that remembers which of its keys were written more than once, and whether with the same value."""

    repeated: list[tuple[str, bool]]


def _too_deep(tokens: re.Pattern, text: str) -> int | None:
    """The 1-based line where bracket nesting first exceeds ``MAX_DEPTH`` (strings and comments skipped), or None."""
    depth = 0
    for match in tokens.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return text.count("\n", 0, match.start()) + 1
        elif token in "]}":
            depth -= 1
    return None


def _refuse_deep(tokens: re.Pattern, text: str, where: str) -> None:
    """``Refused`` when bracket nesting exceeds ``MAX_DEPTH`` (checked on the raw text, before any parser)."""
    line = _too_deep(tokens, text)
    if line is not None:
        raise Refused(
            f"{where}:{line}: refused: nested more than {MAX_DEPTH} levels deep (a config needs fewer than 10)"
        )


def parse_json(text: str, where: str) -> Parsed:
    """``json.loads`` within the bounds; ``Refused`` past them, ``json.JSONDecodeError`` for invalid JSON."""
    check_size(text, where)
    _refuse_deep(_JSON_TOKENS, text, where)

    def pairs_hook(pairs):
        obj = _Object(pairs)
        first: dict = {}
        obj.repeated = []
        for key, value in pairs:
            if key in first:
                obj.repeated.append((key, first[key] == value))
            else:
                first[key] = value
        return obj

    try:
        data = json.loads(text, object_pairs_hook=pairs_hook)
    except RecursionError:
        raise Refused(f"{where}: refused: nested too deeply to read") from None
    repeated: list[tuple[str, int | None, bool]] = []
    stack = [(data, "")]
    while stack:
        value, prefix = stack.pop()
        if isinstance(value, _Object):
            repeated += [(f"{prefix}.{key}" if prefix else key, None, same) for key, same in value.repeated]
            stack.extend((item, f"{prefix}.{key}" if prefix else key) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((item, f"{prefix}[{i}]") for i, item in enumerate(value))
    return Parsed(_plain(data), "json", tuple(repeated))


def _plain(value):
    """``_Object`` back to ``dict`` (iteratively deep is fine: depth is bounded)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def looks_like_json(text: str) -> bool:
    """Whether the text starts like a JSON object or array (YAML flow style starts the same way)."""
    return text.lstrip("\ufeff \t\r\n")[:1] in ("{", "[")
