"""YAML nodes checked one by one, with the file and line of each: the building blocks of
`inventory.py`'s validation, and a loader that bounds what a YAML text may expand to."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from typing import Any

import yaml

from orchestrator.errors import InventoryError

# Real inventories nest 6 deep and hold a few thousand values. The bounds keep a hostile file
# from exhausting the stack (deep nesting) or memory and time (an alias "billion laughs").
MAX_DEPTH = 20
MAX_VALUES = 100_000
MERGE_TAG = "tag:yaml.org,2002:merge"

class Loader(yaml.SafeLoader):
    """SafeLoader that refuses, while composing, nesting past MAX_DEPTH, more than MAX_VALUES
    values with each alias counted as the copy it stands for, and aliases inside their own anchor."""

    def __init__(self, text: str, path: str):
        super().__init__(text)
        self.path = path
        self.depth = 0
        self.count = 0
        self.weights: dict[str, int] = {}  # anchor -> values it expands to

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            assert event.anchor is not None  # an alias always names its anchor
            if event.anchor in self.anchors and event.anchor not in self.weights:
                raise self.refuse(event, f"alias *{event.anchor} is inside its own anchor &{event.anchor}")
            self.grow(self.weights.get(event.anchor, 0), event)
            return super().compose_node(parent, index)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.refuse(event, f"nested more than {MAX_DEPTH} levels deep")
        start = self.count
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        self.grow(1, event)
        if event.anchor is not None:
            self.weights[event.anchor] = self.count - start
        return node

    def grow(self, values: int, event: yaml.Event) -> None:
        self.count += values
        if self.count > MAX_VALUES:
            raise self.refuse(event, f"more than {MAX_VALUES} values (each alias counted as a copy); "
                              "an inventory needs far fewer")

    def refuse(self, event: yaml.Event, message: str) -> InventoryError:
        assert event.start_mark is not None  # the parser marks every event
        return InventoryError(f"{self.path}:{event.start_mark.line + 1}: {message}")


class Ctx:
    """Where we are in the file, for messages: file name and the node's line."""

    def __init__(self, path: str, loader: Loader):
        self.path = path
        self.loader = loader
        self.check_files = True  # files the inventory names (identity_file) must exist

    def fail(self, node: yaml.Node | None, where: str, message: str) -> InventoryError:
        line = node.start_mark.line + 1 if node is not None else 1
        prefix = f"{self.path}:{line}: "
        if node is not None and str(node.start_mark.name).startswith("--set "):
            prefix = f"{node.start_mark.name}: "  # an override from the command line, not the file
        return InventoryError(f"{prefix}{where + ': ' if where else ''}{message}")

    def value(self, node: yaml.Node, where: str) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except (ValueError, TypeError, AttributeError, OverflowError):
            # PyYAML's own converters raise these for e.g. `2024-13-45` or `!!int abc`.
            kind = node.tag.rsplit(":", 1)[-1]
            raise self.fail(node, where, f"{shown(str(node.value))} is not a valid {kind}; "
                            "quote it if you mean the text") from None


def shown(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def mapping(ctx: Ctx, node: yaml.Node, where: str, allowed: tuple[str, ...]) -> dict[str, yaml.Node]:
    """A mapping node's children by key; unknown and duplicate keys are errors."""
    if not isinstance(node, yaml.MappingNode):
        raise ctx.fail(node, where, f"must be a mapping of keys, got {kind(node)}")
    out: dict[str, yaml.Node] = {}
    for key_node, value_node in node.value:
        key = key_of(ctx, key_node, where)
        if not isinstance(key, str):
            raise ctx.fail(key_node, where, f"keys must be names, got {shown(key)}")
        if key not in allowed:
            near = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else f" (known keys: {', '.join(allowed)})"
            raise ctx.fail(key_node, where, f"unknown key '{key}'{hint}")
        if key in out:
            raise ctx.fail(key_node, where, f"key '{key}' is given twice")
        out[key] = value_node
    return out


def key_of(ctx: Ctx, node: yaml.Node, where: str) -> Any:
    if node.tag == MERGE_TAG:
        raise ctx.fail(node, where, "'<<' merge keys are not supported; put keys that hosts share "
                       "under 'defaults:'")
    return ctx.value(node, where)


def kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag.endswith(":null"):
        return "nothing"
    return f"{node.value!r}"


def scalar(ctx: Ctx, node: yaml.Node, where: str, key: str, want: str, check: Callable[[Any], Any]) -> Any:
    """Convert a scalar with `check`, which returns the value or raises ValueError."""
    if not isinstance(node, yaml.ScalarNode):
        raise ctx.fail(node, where, f"'{key}' must be {want}, got {kind(node)}")
    raw = ctx.value(node, where)
    try:
        return check(raw)
    except (ValueError, TypeError):
        pass
    if not isinstance(raw, str) and node.style is None and accepts(check, node.value):
        # `user: yes` or `python: 3.10`: YAML read the text as a bool or number.
        raise ctx.fail(node, where, f"'{key}' must be {want}, got {node.value} (YAML reads it as "
                       f"{shown(raw)}); write it in quotes: '{node.value}'")
    raise ctx.fail(node, where, f"'{key}' must be {want}, got {shown(raw)}")


def accepts(check: Callable[[Any], Any], raw: Any) -> bool:
    try:
        check(raw)
    except (ValueError, TypeError):
        return False
    return True


def nonempty_text(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError
    if "\0" in raw:
        raise ValueError
    return raw


def single_line(raw: Any) -> str:
    text = nonempty_text(raw)
    if any(c in text for c in "\r\n"):
        raise ValueError
    return text


def int_in(low: int, high: int) -> Callable[[Any], int]:
    def check(raw: Any) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= high:
            raise ValueError
        return raw

    return check


def positive_number(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 < raw < math.inf:
        raise ValueError
    return float(raw)


def boolean(raw: Any) -> bool:
    if not isinstance(raw, bool):
        raise ValueError
    return raw


def choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(raw: Any) -> str:
        if raw not in options:
            raise ValueError
        return raw

    return check


def matching(pattern: re.Pattern[str]) -> Callable[[Any], str]:
    def check(raw: Any) -> str:
        if not isinstance(raw, str) or not pattern.match(raw):
            raise ValueError
        return raw

    return check



# Hints for PyYAML's problems, which say what the parser saw but not what to do.
YAML_HINTS = (
    ("'\\t'", "; indent with spaces, not tabs"),
    ("<block end>", "; check the indentation"),
    ("end of stream", "; is a quote or bracket left open?"),
    ("<stream end>", "; is a quote or bracket left open?"),
    ("another document", "; an inventory is one document: remove the second '---'"),
)


def yaml_error(exc: yaml.YAMLError, path: str, text: str) -> InventoryError:
    """One line for PyYAML's multi-line errors: the problem's line, what started it, and a hint."""
    if isinstance(exc, yaml.reader.ReaderError):
        line = text[: exc.position].count("\n") + 1
        return InventoryError(f"{path}:{line}: not a YAML text file (it contains the control "
                              f"character U+{exc.character:04X})")
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark else 1
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and context.startswith("expected"):  # "expected a single document", "but found..."
        problem = f"{context}, {problem}"
    elif context and context_mark and context_mark.line + 1 != line:
        problem = f"{problem} ({context} started on line {context_mark.line + 1})"
    hint = next((h for key, h in YAML_HINTS if key in problem), "")
    return InventoryError(f"{path}:{line}: not valid YAML: {problem}{hint}")
