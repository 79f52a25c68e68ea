"""`--set KEY=VALUE`: change an inventory value for one run without editing the file.

An override replaces (or adds) a node in the composed YAML tree before validation, so it is
checked by exactly the code that checks the file; its nodes carry the override as their
"file name", and errors read `--set job.train.epochs=zero: 'epochs' must be ...`.

Keys are dotted paths of mapping keys (`job.train.epochs`, `defaults.slots`, `ssh.connect_timeout`);
a host is named by its `name` (`hosts.node2.slots=2`). VALUE is YAML (`5`, `gloo`, `[a, b]`).
"""

from __future__ import annotations

import yaml

from orchestrator.errors import InventoryError

EXAMPLE = "e.g. --set job.train.epochs=5"


def apply_overrides(root: yaml.MappingNode, overrides: tuple[str, ...]) -> None:
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.split(".")
        if not sep or not all(parts):
            raise InventoryError(f"--set {item}: expected KEY=VALUE with a dotted key ({EXAMPLE})")
        value = _compose(item, text)
        parent: yaml.Node = root
        for depth, part in enumerate(parts[:-1]):
            parent = _child(parent, part, item, ".".join(parts[: depth + 1]))
        _put(parent, parts[-1], value, item)


def _compose(item: str, text: str) -> yaml.Node:
    try:
        node = yaml.compose(text or "''", Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InventoryError(f"--set {item}: the value is not valid YAML: {problem}") from None
    if node is None:
        node = yaml.ScalarNode("tag:yaml.org,2002:null", "")
    _rename(node, f"--set {item}")
    return node


def _rename(node: yaml.Node, name: str) -> None:
    """Messages name the override instead of a file and line."""
    for mark in ("start_mark", "end_mark"):
        old = getattr(node, mark, None)
        setattr(node, mark, yaml.Mark(name, 0, 0, 0, None, 0) if old is None else
                yaml.Mark(name, old.index, old.line, old.column, None, 0))
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            _rename(k, name)
            _rename(v, name)
    elif isinstance(node, yaml.SequenceNode):
        for v in node.value:
            _rename(v, name)


def _child(parent: yaml.Node, part: str, item: str, path: str) -> yaml.Node:
    """The mapping at `part` under `parent`, made empty when missing; a host by its name."""
    if isinstance(parent, yaml.SequenceNode):  # hosts: find the one with this name
        for host in parent.value:
            if isinstance(host, yaml.MappingNode) and any(
                    k.value == "name" and getattr(v, "value", None) == part for k, v in host.value):
                return host
        raise InventoryError(f"--set {item}: no host named '{part}' in the inventory")
    if not isinstance(parent, yaml.MappingNode):
        raise InventoryError(f"--set {item}: '{path}' is not a mapping in the inventory")
    for k, v in parent.value:
        if getattr(k, "value", None) == part:
            if isinstance(v, yaml.ScalarNode) and v.tag.endswith(":null"):
                fresh = yaml.MappingNode("tag:yaml.org,2002:map", [], v.start_mark, v.end_mark)
                parent.value[parent.value.index((k, v))] = (k, fresh)
                return fresh
            return v
    mark = yaml.Mark(f"--set {item}", 0, 0, 0, None, 0)
    fresh = yaml.MappingNode("tag:yaml.org,2002:map", [], mark, mark)
    parent.value.append((yaml.ScalarNode("tag:yaml.org,2002:str", part, mark, mark), fresh))
    return fresh


def _put(parent: yaml.Node, part: str, value: yaml.Node, item: str) -> None:
    if not isinstance(parent, yaml.MappingNode):
        raise InventoryError(f"--set {item}: cannot set '{part}' there: not a mapping in the inventory")
    for index, (k, _) in enumerate(parent.value):
        if getattr(k, "value", None) == part:
            parent.value[index] = (k, value)
            return
    mark = value.start_mark
    parent.value.append((yaml.ScalarNode("tag:yaml.org,2002:str", part, mark, mark), value))
