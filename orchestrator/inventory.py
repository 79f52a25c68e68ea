"""The host inventory: YAML validated at load time into frozen dataclasses.

Every error names the file, the line and the field, and says how to fix it:
``inventory.yaml:12: hosts[1] (node2): 'slots' must be a positive integer, got 'two'``.
Precedence is written once, in `_host`: a host's own key wins over `defaults`.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from orchestrator.errors import InventoryError

MAX_BYTES = 1 << 20  # an inventory is a few KiB; refuse to parse megabytes of YAML
# Real inventories nest 6 deep and hold a few thousand values. The bounds keep a hostile file
# from exhausting the stack (deep nesting) or memory and time (an alias "billion laughs").
MAX_DEPTH = 20
MAX_VALUES = 100_000
MERGE_TAG = "tag:yaml.org,2002:merge"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
JOB_NAME = HOST_NAME
BACKENDS = ("auto", "nccl", "gloo")
DATASETS = ("mnist", "generated")
FALLBACKS = ("none", "generated")


@dataclass(frozen=True)
class EnvVar:
    """One environment variable for the ranks; secret ones are shown as ***."""

    name: str
    value: str
    secret: bool = False

    @property
    def shown(self) -> str:
        return "***" if self.secret else self.value


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    connection: str = "ssh"  # ssh | local
    user: str | None = None
    port: int | None = None
    identity_file: str | None = None
    python: str = "python3"
    workdir: str = "~/.distctl"
    slots: int | None = None  # None: GPUs found, else 1
    env: tuple[EnvVar, ...] = ()
    line: int = 0

    @property
    def is_local(self) -> bool:
        return self.connection == "local"


@dataclass(frozen=True)
class Train:
    epochs: int = 100
    batch_size: int = 64
    lr: float = 0.01
    seed: int = 0
    timeout: int = 300


@dataclass(frozen=True)
class Job:
    name: str = "mnist"
    port: int = 23456
    backend: str = "auto"
    data: str | None = None  # workstation folder with MNIST/raw, pushed to every host
    dataset: str = "mnist"
    fallback: str = "none"  # what ranks train on when MNIST can't be read or downloaded
    join_timeout: float = 300.0
    env: tuple[EnvVar, ...] = ()
    train: Train = field(default_factory=Train)


@dataclass(frozen=True)
class Ssh:
    known_hosts: tuple[str, ...] = ("~/.ssh/known_hosts",)
    accept_new_host_keys: bool = False
    config: str | None = None  # ssh_config file; default ~/.ssh/config
    connect_timeout: float = 10.0


@dataclass(frozen=True)
class Inventory:
    path: str
    hosts: tuple[Host, ...]
    job: Job
    ssh: Ssh

    @property
    def world_size_known(self) -> bool:
        return all(h.slots is not None for h in self.hosts)

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret value, so that output can mask it."""
        envs = [self.job.env] + [h.env for h in self.hosts]
        return tuple(v.value for env in envs for v in env if v.secret)


# ---------------------------------------------------------------- validation


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses, while composing, nesting past MAX_DEPTH, more than MAX_VALUES
    values with each alias counted as the copy it stands for, and aliases inside their own anchor."""

    def __init__(self, text: str, path: str):
        super().__init__(text)
        self.path = path
        self.depth = 0
        self.count = 0
        self.weights: dict[str, int] = {}  # anchor -> values it expands to

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
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
        return InventoryError(f"{self.path}:{event.start_mark.line + 1}: {message}")


class _Ctx:
    """Where we are in the file, for messages: file name and the node's line."""

    def __init__(self, path: str, loader: _Loader):
        self.path = path
        self.loader = loader

    def fail(self, node: yaml.Node | None, where: str, message: str) -> InventoryError:
        line = node.start_mark.line + 1 if node is not None else 1
        prefix = f"{self.path}:{line}: "
        return InventoryError(f"{prefix}{where + ': ' if where else ''}{message}")

    def value(self, node: yaml.Node, where: str) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except (ValueError, TypeError, AttributeError, OverflowError):
            # PyYAML's own converters raise these for e.g. `2024-13-45` or `!!int abc`.
            kind = node.tag.rsplit(":", 1)[-1]
            raise self.fail(node, where, f"{_shown(str(node.value))} is not a valid {kind}; "
                            "quote it if you mean the text") from None


def _shown(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _mapping(ctx: _Ctx, node: yaml.Node, where: str, allowed: tuple[str, ...]) -> dict[str, yaml.Node]:
    """A mapping node's children by key; unknown and duplicate keys are errors."""
    if not isinstance(node, yaml.MappingNode):
        raise ctx.fail(node, where, f"must be a mapping of keys, got {_kind(node)}")
    out: dict[str, yaml.Node] = {}
    for key_node, value_node in node.value:
        key = _key(ctx, key_node, where)
        if not isinstance(key, str):
            raise ctx.fail(key_node, where, f"keys must be names, got {_shown(key)}")
        if key not in allowed:
            near = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else f" (known keys: {', '.join(allowed)})"
            raise ctx.fail(key_node, where, f"unknown key '{key}'{hint}")
        if key in out:
            raise ctx.fail(key_node, where, f"key '{key}' is given twice")
        out[key] = value_node
    return out


def _key(ctx: _Ctx, node: yaml.Node, where: str) -> Any:
    if node.tag == MERGE_TAG:
        raise ctx.fail(node, where, "'<<' merge keys are not supported; put keys that hosts share "
                       "under 'defaults:'")
    return ctx.value(node, where)


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag.endswith(":null"):
        return "nothing"
    return f"{node.value!r}"


def _scalar(ctx: _Ctx, node: yaml.Node, where: str, key: str, want: str, check: Callable[[Any], Any]) -> Any:
    """Convert a scalar with `check`, which returns the value or raises ValueError."""
    if not isinstance(node, yaml.ScalarNode):
        raise ctx.fail(node, where, f"'{key}' must be {want}, got {_kind(node)}")
    raw = ctx.value(node, where)
    try:
        return check(raw)
    except (ValueError, TypeError):
        pass
    if not isinstance(raw, str) and node.style is None and _accepts(check, node.value):
        # `user: yes` or `python: 3.10`: YAML read the text as a bool or number.
        raise ctx.fail(node, where, f"'{key}' must be {want}, got {node.value} (YAML reads it as "
                       f"{_shown(raw)}); write it in quotes: '{node.value}'")
    raise ctx.fail(node, where, f"'{key}' must be {want}, got {_shown(raw)}")


def _accepts(check: Callable[[Any], Any], raw: Any) -> bool:
    try:
        check(raw)
    except (ValueError, TypeError):
        return False
    return True


def _text(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError
    if "\0" in raw:
        raise ValueError
    return raw


def _single_line(raw: Any) -> str:
    text = _text(raw)
    if any(c in text for c in "\r\n"):
        raise ValueError
    return text


def _int_in(low: int, high: int) -> Callable[[Any], int]:
    def check(raw: Any) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= high:
            raise ValueError
        return raw

    return check


def _positive_number(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 < raw < math.inf:
        raise ValueError
    return float(raw)


def _bool(raw: Any) -> bool:
    if not isinstance(raw, bool):
        raise ValueError
    return raw


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(raw: Any) -> str:
        if raw not in options:
            raise ValueError
        return raw

    return check


def _matching(pattern: re.Pattern[str]) -> Callable[[Any], str]:
    def check(raw: Any) -> str:
        if not isinstance(raw, str) or not pattern.match(raw):
            raise ValueError
        return raw

    return check


def _env(ctx: _Ctx, node: yaml.Node, where: str, environ: dict[str, str]) -> tuple[EnvVar, ...]:
    """`env:` maps NAME to a value, or to `{from_env: VAR}`: a secret read here, at load time."""
    if not isinstance(node, yaml.MappingNode):
        raise ctx.fail(node, where, f"'env' must be a mapping of NAME: value, got {_kind(node)}")
    out: list[EnvVar] = []
    for key_node, value_node in node.value:
        name = _key(ctx, key_node, where)
        if not isinstance(name, str) or not ENV_NAME.match(name):
            raise ctx.fail(key_node, where, f"env name {_shown(name)} is not a valid variable name "
                           "(letters, digits and _, not starting with a digit)")
        if any(v.name == name for v in out):
            raise ctx.fail(key_node, where, f"env '{name}' is given twice")
        out.append(_env_value(ctx, value_node, f"{where}: env '{name}'", name, environ))
    return tuple(out)


def _env_value(ctx: _Ctx, node: yaml.Node, where: str, name: str, environ: dict[str, str]) -> EnvVar:
    """A value is taken as written: `UMASK: 0022` stays "0022", where YAML would read 18."""
    if isinstance(node, yaml.MappingNode):
        keys = _mapping(ctx, node, where, ("from_env",))
        if "from_env" not in keys:
            raise ctx.fail(node, where, "a secret needs 'from_env: VARIABLE'")
        source = _scalar(ctx, keys["from_env"], where, "from_env", "a variable name", _matching(ENV_NAME))
        if source not in environ:
            raise ctx.fail(node, where, f"secret variable ${source} is not set in this shell "
                           f"(export {source}=... before running distctl)")
        value = environ[source]
        if "\0" in value:
            raise ctx.fail(node, where, f"secret variable ${source} contains a NUL byte")
        return EnvVar(name, value, secret=True)
    if not isinstance(node, yaml.ScalarNode) or node.tag.endswith(":null"):
        raise ctx.fail(node, where, f"must be a string, number or {{from_env: VAR}}, got {_kind(node)}")
    ctx.value(node, where)  # a bad explicit tag (`!!int x`) is an error, not text
    value = node.value
    if "\0" in value:
        raise ctx.fail(node, where, "must not contain a NUL byte")
    return EnvVar(name, value)


HOST_KEYS = ("name", "address", "connection", "user", "port", "identity_file", "python",
             "workdir", "slots", "env")
JOB_KEYS = ("name", "port", "backend", "data", "dataset", "fallback", "join_timeout", "env", "train")
TRAIN_KEYS = ("epochs", "batch_size", "lr", "seed", "timeout")
SSH_KEYS = ("known_hosts", "accept_new_host_keys", "config", "connect_timeout")
TOP_KEYS = ("defaults", "hosts", "job", "ssh")


def _host_fields(ctx: _Ctx, keys: dict[str, yaml.Node], where: str, environ: dict[str, str]) -> dict[str, Any]:
    """The host keys present in one mapping (a host or `defaults`), converted."""
    text = _single_line
    converters: dict[str, tuple[str, Callable[[Any], Any]]] = {
        "name": ("a name of letters, digits, '.', '_' or '-'", _matching(HOST_NAME)),
        "address": ("a host name, IP address or ssh_config alias", text),
        "connection": ("'ssh' or 'local'", _choice(("ssh", "local"))),
        "user": ("a user name", text),
        "port": ("a port number from 1 to 65535", _int_in(1, 65535)),
        "identity_file": ("a file path", text),
        "python": ("a command or path", text),
        "workdir": ("a directory path", text),
        "slots": ("a positive integer", _int_in(1, 1024)),
    }
    out: dict[str, Any] = {}
    for key, node in keys.items():
        if key == "env":
            out["env"] = _env(ctx, node, where, environ)
        else:
            want, check = converters[key]
            out[key] = _scalar(ctx, node, where, key, want, check)
    return out


def _host(ctx: _Ctx, node: yaml.Node, index: int, defaults: dict[str, Any], environ: dict[str, str]) -> Host:
    where = f"hosts[{index}]"
    if not isinstance(node, yaml.MappingNode):
        raise ctx.fail(node, where, f"each host must be a mapping like {{name: node1, address: 10.0.0.1}}, "
                       f"got {_kind(node)}")
    # Named before the keys are checked, so an unknown key's message names the host too.
    name = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == "name"), None)
    if isinstance(name, yaml.ScalarNode) and HOST_NAME.match(name.value):
        where = f"hosts[{index}] ({name.value})"
    keys = _mapping(ctx, node, where, HOST_KEYS)
    own = _host_fields(ctx, keys, where, environ)
    merged = {k: v for k, v in defaults.items() if k not in ("name", "address")}
    # A host's own env adds to (and overrides) the defaults' env, name by name.
    env = {v.name: v for v in merged.pop("env", ())}
    env.update({v.name: v for v in own.pop("env", ())})
    merged.update(own)
    if merged.get("connection") == "local":
        merged.setdefault("address", "localhost")
        # The workstation's own interpreter is the one known to have distctl's extras.
        merged.setdefault("python", sys.executable)
    for required in ("name", "address"):
        if required not in merged:
            raise ctx.fail(node, where, f"missing '{required}'")
    return Host(**merged, env=tuple(env.values()), line=node.start_mark.line + 1)


def _hosts(ctx: _Ctx, node: yaml.Node | None, defaults: dict[str, Any], environ: dict[str, str]) -> tuple[Host, ...]:
    if node is None:
        raise ctx.fail(node, "", "'hosts' is missing; list at least one host under 'hosts:'")
    if (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")) or (
            isinstance(node, yaml.SequenceNode) and not node.value):
        raise ctx.fail(node, "hosts", "the list is empty; add at least one host")
    if not isinstance(node, yaml.SequenceNode):
        raise ctx.fail(node, "hosts", f"must be a list of hosts, got {_kind(node)}")
    hosts = [_host(ctx, n, i, defaults, environ) for i, n in enumerate(node.value)]
    seen_names: dict[str, Host] = {}
    seen_targets: dict[tuple[str, int | None, str], Host] = {}
    for i, (h, n) in enumerate(zip(hosts, node.value)):
        if h.name in seen_names:
            raise ctx.fail(n, f"hosts[{i}] ({h.name})",
                           f"duplicate host name '{h.name}' (first on line {seen_names[h.name].line})")
        seen_names[h.name] = h
        target = (h.address, h.port, h.connection)
        if target in seen_targets and not h.is_local:
            first = seen_targets[target]
            raise ctx.fail(n, f"hosts[{i}] ({h.name})",
                           f"same address and port as '{first.name}' (line {first.line}); "
                           "give one host more 'slots' instead")
        seen_targets[target] = h
    return tuple(hosts)


def _train(ctx: _Ctx, node: yaml.Node) -> Train:
    keys = _mapping(ctx, node, "job.train", TRAIN_KEYS)
    checks = {
        "epochs": ("a positive integer", _int_in(1, 1_000_000)),
        "batch_size": ("a positive integer", _int_in(1, 1_000_000)),
        "lr": ("a positive number", _positive_number),
        "seed": ("a non-negative integer", _int_in(0, 2**63 - 1)),
        "timeout": ("a positive integer (seconds)", _int_in(1, 7 * 24 * 3600)),
    }
    return Train(**{k: _scalar(ctx, n, "job.train", k, *checks[k]) for k, n in keys.items()})


def _job(ctx: _Ctx, node: yaml.Node | None, environ: dict[str, str]) -> Job:
    if node is None:
        return Job()
    keys = _mapping(ctx, node, "job", JOB_KEYS)
    checks: dict[str, tuple[str, Callable[[Any], Any]]] = {
        "name": ("a name of letters, digits, '.', '_' or '-'", _matching(JOB_NAME)),
        "port": ("a port number from 1 to 65535", _int_in(1, 65535)),
        "backend": ("one of auto, nccl, gloo", _choice(BACKENDS)),
        "data": ("a folder path on this workstation", _single_line),
        "dataset": ("one of mnist, generated", _choice(DATASETS)),
        "fallback": ("one of none, generated", _choice(FALLBACKS)),
        "join_timeout": ("a positive number of seconds", _positive_number),
    }
    values: dict[str, Any] = {}
    for key, n in keys.items():
        if key == "env":
            values["env"] = _env(ctx, n, "job", environ)
        elif key == "train":
            values["train"] = _train(ctx, n)
        else:
            values[key] = _scalar(ctx, n, "job", key, *checks[key])
    if "data" in values:
        data = Path(ctx.path).parent / Path(values["data"]).expanduser()
        if not data.is_dir():
            problem = "is not a folder" if data.exists() else "does not exist"
            raise ctx.fail(keys["data"], "job", f"'data' folder {values['data']!r} {problem} "
                           f"(looked in {data.absolute()})")
        values["data"] = str(data.resolve())
    return Job(**values)


def _ssh(ctx: _Ctx, node: yaml.Node | None) -> Ssh:
    if node is None:
        return Ssh()
    keys = _mapping(ctx, node, "ssh", SSH_KEYS)
    values: dict[str, Any] = {}
    for key, n in keys.items():
        if key == "known_hosts":
            if isinstance(n, yaml.SequenceNode):
                values[key] = tuple(_scalar(ctx, c, "ssh", key, "a file path", _single_line) for c in n.value)
            else:
                values[key] = (_scalar(ctx, n, "ssh", key, "a file path or a list of them", _single_line),)
        elif key == "accept_new_host_keys":
            values[key] = _scalar(ctx, n, "ssh", key, "true or false", _bool)
        elif key == "config":
            values[key] = _scalar(ctx, n, "ssh", key, "a file path", _single_line)
        else:
            values[key] = _scalar(ctx, n, "ssh", key, "a positive number of seconds", _positive_number)
    return Ssh(**values)


def _defaults(ctx: _Ctx, node: yaml.Node | None, environ: dict[str, str]) -> dict[str, Any]:
    if node is None:
        return {}
    keys = _mapping(ctx, node, "defaults", HOST_KEYS)
    for only_per_host in ("name", "address"):
        if only_per_host in keys:
            raise ctx.fail(keys[only_per_host], "defaults",
                           f"'{only_per_host}' belongs to each host, not to defaults")
    return _host_fields(ctx, keys, "defaults", environ)


# Hints for PyYAML's problems, which say what the parser saw but not what to do.
_YAML_HINTS = (
    ("'\\t'", "; indent with spaces, not tabs"),
    ("<block end>", "; check the indentation"),
    ("end of stream", "; is a quote or bracket left open?"),
    ("<stream end>", "; is a quote or bracket left open?"),
    ("another document", "; an inventory is one document: remove the second '---'"),
)


def _yaml_error(exc: yaml.YAMLError, path: str, text: str) -> InventoryError:
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
    hint = next((h for key, h in _YAML_HINTS if key in problem), "")
    return InventoryError(f"{path}:{line}: not valid YAML: {problem}{hint}")


def parse_inventory(text: str, path: str = "inventory.yaml", environ: dict[str, str] | None = None) -> Inventory:
    """Validate inventory text; raises InventoryError naming file, line and field."""
    environ = dict(os.environ if environ is None else environ)
    if len(text) > MAX_BYTES:
        raise InventoryError(f"{path}:1: the inventory is larger than 1 MiB; is this the right file?")
    if not text.strip():  # before YAML, which reads a line of just a tab as bad indentation
        raise InventoryError(f"{path}:1: the inventory is empty: it needs at least 'hosts:'")
    if "\0" in text:
        line = text[: text.index("\0")].count("\n") + 1
        raise InventoryError(f"{path}:{line}: not a YAML text file (it contains NUL bytes)")
    try:
        loader = _Loader(text, path)  # reads the whole text: refuses control characters here
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, path, text) from None
    ctx = _Ctx(path, loader)
    try:
        root = loader.get_single_node()
        if root is None or (isinstance(root, yaml.ScalarNode) and root.tag.endswith(":null")):
            raise InventoryError(f"{path}:1: the inventory is empty: it needs at least 'hosts:'")
        if not isinstance(root, yaml.MappingNode):
            raise ctx.fail(root, "", f"the inventory must be a mapping with 'hosts:', got {_kind(root)}")
        top = _mapping(ctx, root, "", TOP_KEYS)
        defaults = _defaults(ctx, top.get("defaults"), environ)
        hosts = _hosts(ctx, top.get("hosts"), defaults, environ)
        return Inventory(path=path, hosts=hosts, job=_job(ctx, top.get("job"), environ),
                         ssh=_ssh(ctx, top.get("ssh")))
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, path, text) from None
    except RecursionError:  # MAX_DEPTH should make this unreachable; a traceback would be worse
        raise InventoryError(f"{path}:1: not valid YAML: nested too deeply") from None
    finally:
        loader.dispose()


def load_inventory(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> Inventory:
    """Read and validate an inventory file."""
    shown = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise InventoryError(f"{shown}: cannot read the inventory: {exc.strerror}") from None
    if len(data) > MAX_BYTES:
        raise InventoryError(f"{shown}:1: the inventory is larger than 1 MiB; is this the right file?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InventoryError(f"{shown}:{line}: not a UTF-8 text file") from None
    return parse_inventory(text, shown, environ)
