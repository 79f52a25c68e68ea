"""The host inventory: YAML validated at load time into frozen dataclasses.

Every error names the file, the line and the field, and says how to fix it:
``inventory.yaml:12: hosts[1] (node2): 'slots' must be a positive integer, got 'two'``.
Precedence is written once, in `_host`: a host's own key wins over `defaults`.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from orchestrator.inventory import yamlnodes as y
from orchestrator.errors import InventoryError
from orchestrator.inventory.slurm import LOGIN_KEYS, LOGIN_NAME, parse_slurm

MAX_BYTES = 1 << 20  # an inventory is a few KiB; refuse to parse megabytes of YAML
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
    name: str | None = None  # the prefix of run ids; None: run_name decides
    port: int = 23456
    backend: str = "auto"
    data: str | None = None  # workstation folder pushed to every host (MNIST/raw for the trainer)
    dataset: str = "mnist"
    fallback: str = "none"  # what ranks train on when MNIST can't be read or downloaded
    join_timeout: float = 300.0
    env: tuple[EnvVar, ...] = ()
    train: Train = field(default_factory=Train)
    code: str | None = None  # workstation folder with the user's program, pushed to every host
    command: tuple[str, ...] = ()  # the user's program; empty: the bundled trainer
    args: tuple[str, ...] = ()  # `up ... -- ARGS`: appended to the command (or the trainer's arguments)
    setup: str | None = None  # shell script run once per host before launch
    outputs: tuple[str, ...] = ()  # globs under the run's working directory, for `pull`
    wait_for_rank0: bool = True  # start the other ranks once rank 0 listens on job.port
    max_restarts: int = 0  # restarts of every rank after a failure (hostside/agent.py); 0: none
    min_hosts: int | None = None  # drop a lost host while this many remain; None: every host
    lost_host_timeout: float = 180.0  # a silent host is a link fault until then, then lost
    hang_timeout: float | None = None  # no rank's progress for this long: stacks, then end or restart; None: off

    @property
    def restarts(self) -> bool:
        """A per-host agent watches the ranks and restarts them (job.max_restarts > 0)."""
        return self.max_restarts > 0

    @property
    def coordinated(self) -> bool:
        """The hosts' agents talk to the coordinator on rank 0's host (job.port + 1): to restart
        the ranks, or to judge the hang timeout. Otherwise each host's agent only watches its own."""
        return self.restarts or self.hang_timeout is not None

    @property
    def control_port(self) -> int:
        """Where the agents reach the coordinator on rank 0's host."""
        return self.port + 1

    @property
    def run_name(self) -> str:
        """The prefix of this job's run ids: `job.name`, else `mnist` for the bundled trainer,
        else what the command runs (`train` for `python train.py`, see program_name)."""
        if self.name:
            return self.name
        return program_name(self.command) if self.command else "mnist"

    @property
    def is_trainer(self) -> bool:
        """The bundled MNIST trainer runs (no `job.command`): its conventions apply."""
        return not self.command


_INTERPRETERS = re.compile(r"(python|pypy)[0-9.]*|sh|bash|dash|zsh")
_OPTIONS_WITH_VALUE = ("-W", "-X", "-o", "-O")  # python -W ignore, -X dev; sh -o errexit


def program_name(command: Sequence[str]) -> str:
    """What a command runs, as a run id's prefix: the script or module after an interpreter and
    its options (`python -u train.py` → `train`, `python -m pkg.fit` → `fit`), else the program
    itself (`./run.sh` → `run`); the interpreter's name for `python -c ...`."""
    program = PurePosixPath(command[0]).name if command else ""
    if _INTERPRETERS.fullmatch(program):
        words = iter(command[1:])
        for word in words:
            if word == "-m":
                return _as_name(next(words, program).rsplit(".", 1)[-1])
            if word == "-c":
                break
            if word in _OPTIONS_WITH_VALUE:
                next(words, None)
            elif not word.startswith("-"):
                program = PurePosixPath(word).name
                break
    return _as_name(program.rsplit(".", 1)[0] if "." in program[1:] else program)


def _as_name(text: str) -> str:
    """`text` in a job name's letters (letters, digits, '.', '_', '-'), or `run`."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:40]
    return name if name and JOB_NAME.match(name) else "run"


@dataclass(frozen=True)
class Ssh:
    known_hosts: tuple[str, ...] = ()  # set: replaces ssh_config's UserKnownHostsFile, like ssh -o
    accept_new_host_keys: bool = False
    config: str | None = None  # ssh_config file; default ~/.ssh/config
    connect_timeout: float | None = None  # None: ssh_config's ConnectTimeout, else 10 s
    reconnect_timeout: float = 300.0  # a host unreachable this long while followed: run state unknown


@dataclass(frozen=True)
class Inventory:
    path: str
    hosts: tuple[Host, ...]
    job: Job
    ssh: Ssh
    overrides: tuple[str, ...] = ()  # `--set KEY=VALUE` applied on top of the file
    slurm: Any = None  # orchestrator.inventory.slurm.SlurmTarget: a batch job instead of `hosts`

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret value, so that output can mask it."""
        envs = [self.job.env] + [h.env for h in self.hosts] + ([self.slurm.login.env] if self.slurm else [])
        return tuple(v.value for env in envs for v in env if v.secret)


def _env(ctx: y.Ctx, node: yaml.Node, where: str, environ: dict[str, str]) -> tuple[EnvVar, ...]:
    """`env:` maps NAME to a value, or to `{from_env: VAR}`: a secret read here, at load time."""
    if not isinstance(node, yaml.MappingNode):
        raise ctx.fail(node, where, f"'env' must be a mapping of NAME: value, got {y.kind(node)}")
    out: list[EnvVar] = []
    for key_node, value_node in node.value:
        name = y.key_of(ctx, key_node, where)
        if not isinstance(name, str) or not ENV_NAME.match(name):
            raise ctx.fail(key_node, where, f"env name {y.shown(name)} is not a valid variable name "
                           "(letters, digits and _, not starting with a digit)")
        if any(v.name == name for v in out):
            raise ctx.fail(key_node, where, f"env '{name}' is given twice")
        out.append(_env_value(ctx, value_node, f"{where}: env '{name}'", name, environ))
    return tuple(out)


def _env_value(ctx: y.Ctx, node: yaml.Node, where: str, name: str, environ: dict[str, str]) -> EnvVar:
    """A value is taken as written: `UMASK: 0022` stays "0022", where YAML would read 18."""
    if isinstance(node, yaml.MappingNode):
        keys = y.mapping(ctx, node, where, ("from_env",))
        if "from_env" not in keys:
            raise ctx.fail(node, where, "a secret needs 'from_env: VARIABLE'")
        source = y.scalar(ctx, keys["from_env"], where, "from_env", "a variable name", y.matching(ENV_NAME))
        if source not in environ:
            raise ctx.fail(node, where, f"secret variable ${source} is not set in this shell "
                           f"(export {source}=... before running distctl)")
        value = environ[source]
        if "\0" in value:
            raise ctx.fail(node, where, f"secret variable ${source} contains a NUL byte")
        return EnvVar(name, value, secret=True)
    if not isinstance(node, yaml.ScalarNode) or node.tag.endswith(":null"):
        raise ctx.fail(node, where, f"must be a string, number or {{from_env: VAR}}, got {y.kind(node)}")
    ctx.value(node, where)  # a bad explicit tag (`!!int x`) is an error, not text
    value = node.value
    if "\0" in value:
        raise ctx.fail(node, where, "must not contain a NUL byte")
    return EnvVar(name, value)


HOST_KEYS = ("name", "address", "connection", "user", "port", "identity_file", "python",
             "workdir", "slots", "env")
JOB_KEYS = ("name", "port", "backend", "data", "dataset", "fallback", "join_timeout", "env", "train",
            "code", "command", "setup", "outputs", "wait_for_rank0", "max_restarts", "min_hosts",
            "lost_host_timeout", "hang_timeout")
TRAIN_KEYS = ("epochs", "batch_size", "lr", "seed", "timeout")
SSH_KEYS = ("known_hosts", "accept_new_host_keys", "config", "connect_timeout", "reconnect_timeout")
TOP_KEYS = ("defaults", "hosts", "job", "ssh", "slurm")


def _host_fields(ctx: y.Ctx, keys: dict[str, yaml.Node], where: str, environ: dict[str, str]) -> dict[str, Any]:
    """The host keys present in one mapping (a host or `defaults`), converted."""
    text = y.single_line
    converters: dict[str, tuple[str, Callable[[Any], Any]]] = {
        "name": ("a name of letters, digits, '.', '_' or '-'", y.matching(HOST_NAME)),
        "address": ("a host name, IP address or ssh_config alias", text),
        "connection": ("'ssh' or 'local'", y.choice(("ssh", "local"))),
        "user": ("a user name", text),
        "port": ("a port number from 1 to 65535", y.int_in(1, 65535)),
        "identity_file": ("a file path", text),
        "python": ("a command or path", text),
        "workdir": ("a directory path", text),
        "slots": ("a positive integer", y.int_in(1, 1024)),
    }
    out: dict[str, Any] = {}
    for key, node in keys.items():
        if key == "env":
            out["env"] = _env(ctx, node, where, environ)
        else:
            want, check = converters[key]
            out[key] = y.scalar(ctx, node, where, key, want, check)
    if "identity_file" in out and ctx.check_files and not os.path.isfile(os.path.expanduser(out["identity_file"])):
        # A key that isn't there is a mistake here, not a host that can't be reached.
        raise ctx.fail(keys["identity_file"], where, f"identity_file {out['identity_file']} does not exist")
    return out


def _host(ctx: y.Ctx, node: yaml.Node, index: int, defaults: dict[str, Any], environ: dict[str, str]) -> Host:
    where = f"hosts[{index}]"
    if not isinstance(node, yaml.MappingNode):
        raise ctx.fail(node, where, f"each host must be a mapping like {{name: node1, address: 10.0.0.1}}, "
                       f"got {y.kind(node)}")
    # Named before the keys are checked, so an unknown key's message names the host too.
    name = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == "name"), None)
    if isinstance(name, yaml.ScalarNode) and HOST_NAME.match(name.value):
        where = f"hosts[{index}] ({name.value})"
    keys = y.mapping(ctx, node, where, HOST_KEYS)
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


def _hosts(ctx: y.Ctx, node: yaml.Node | None, defaults: dict[str, Any], environ: dict[str, str]) -> tuple[Host, ...]:
    if node is None:
        raise ctx.fail(node, "", "'hosts' is missing; list at least one host under 'hosts:'")
    if (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")) or (
            isinstance(node, yaml.SequenceNode) and not node.value):
        raise ctx.fail(node, "hosts", "the list is empty; add at least one host")
    if not isinstance(node, yaml.SequenceNode):
        raise ctx.fail(node, "hosts", f"must be a list of hosts, got {y.kind(node)}")
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


def _train(ctx: y.Ctx, node: yaml.Node) -> Train:
    keys = y.mapping(ctx, node, "job.train", TRAIN_KEYS)
    checks = {
        "epochs": ("a positive integer", y.int_in(1, 1_000_000)),
        "batch_size": ("a positive integer", y.int_in(1, 1_000_000)),
        "lr": ("a positive number", y.positive_number),
        "seed": ("a non-negative integer", y.int_in(0, 2**63 - 1)),
        "timeout": ("a positive integer (seconds)", y.int_in(1, 7 * 24 * 3600)),
    }
    return Train(**{k: y.scalar(ctx, n, "job.train", k, *checks[k]) for k, n in keys.items()})


def _job(ctx: y.Ctx, node: yaml.Node | None, environ: dict[str, str]) -> Job:
    if node is None:
        return Job()
    keys = y.mapping(ctx, node, "job", JOB_KEYS)
    checks: dict[str, tuple[str, Callable[[Any], Any]]] = {
        "name": ("a name of letters, digits, '.', '_' or '-'", y.matching(JOB_NAME)),
        "port": ("a port number from 1 to 65535", y.int_in(1, 65535)),
        "backend": ("one of auto, nccl, gloo", y.choice(BACKENDS)),
        "data": ("a folder path on this workstation", y.single_line),
        "code": ("a folder path on this workstation", y.single_line),
        "dataset": ("one of mnist, generated", y.choice(DATASETS)),
        "fallback": ("one of none, generated", y.choice(FALLBACKS)),
        "join_timeout": ("a positive number of seconds", y.positive_number),
        "max_restarts": ("a whole number from 0 to 1000", y.int_in(0, 1000)),
        "min_hosts": ("a positive whole number", y.int_in(1, 100_000)),
        "lost_host_timeout": ("a positive number of seconds", y.positive_number),
        "hang_timeout": ("a positive number of seconds", y.positive_number),
    }
    values: dict[str, Any] = {}
    for key, n in keys.items():
        if key == "env":
            values["env"] = _env(ctx, n, "job", environ)
        elif key == "train":
            values["train"] = _train(ctx, n)
        elif key == "command":
            values["command"] = _command(ctx, n)
        elif key == "setup":
            values["setup"] = y.scalar(ctx, n, "job", key, "a shell script (text)", y.nonempty_text)
        elif key == "outputs":
            values["outputs"] = _globs(ctx, n)
        elif key == "wait_for_rank0":
            values[key] = y.scalar(ctx, n, "job", key, "true or false", y.boolean)
        else:
            values[key] = y.scalar(ctx, n, "job", key, *checks[key])
    if "train" in keys and "command" in keys:
        newer = keys["command"] if str(keys["command"].start_mark.name).startswith("--set ") else keys["train"]
        raise ctx.fail(newer, "job", "'train' configures the bundled trainer, but 'command' runs "
                       "your own program; remove one of them (pass your program's options in 'command')")
    if "min_hosts" in values and not values.get("max_restarts"):
        raise ctx.fail(keys["min_hosts"], "job", "'min_hosts' needs 'max_restarts' of 1 or more: "
                       "dropping a lost host restarts the job on the others, and counts as a restart")
    if (values.get("max_restarts") or values.get("hang_timeout")) and values.get("port") == 65535:
        raise ctx.fail(keys["port"], "job", "with 'max_restarts' or 'hang_timeout', port + 1 is the agents' "
                       "control port: "
                       "choose a port below 65535")
    for folder in ("data", "code"):
        if folder in values:
            values[folder] = _folder(ctx, keys[folder], folder, values[folder])
    if "data" in values and "command" not in values:
        _check_mnist(ctx, keys["data"], values["data"])
    return Job(**values)


def _folder(ctx: y.Ctx, node: yaml.Node, key: str, value: str) -> str:
    """A workstation folder named relative to the inventory file, resolved."""
    path = Path(ctx.path).parent / Path(value).expanduser()
    if not path.is_dir():
        problem = "is not a folder" if path.exists() else "does not exist"
        raise ctx.fail(node, "job", f"'{key}' folder {value!r} {problem} (looked in {path.absolute()})")
    return str(path.resolve())


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


def _check_mnist(ctx: y.Ctx, node: yaml.Node, folder: str) -> None:
    """The bundled trainer reads `<data>/MNIST/raw/*-ubyte` (torchvision's layout): a folder
    one level off would otherwise pass here and train on something the user never asked for."""
    raw = Path(folder, "MNIST", "raw")
    missing = [f for f in MNIST_FILES if not (raw / f).is_file() and not (raw / f"{f}.gz").is_file()]
    if missing:
        hint = ""
        if Path(folder).name == "raw" and Path(folder).parent.name == "MNIST":
            hint = f"; point 'data' at {Path(folder).parent.parent} (the folder that holds MNIST/)"
        raise ctx.fail(node, "job", f"'data' folder {folder} does not hold MNIST in torchvision's "
                       f"layout: expected MNIST/raw/{missing[0]} (or .gz) in it{hint}")


def _command(ctx: y.Ctx, node: yaml.Node) -> tuple[str, ...]:
    """A string is split like a shell would (quotes, no expansion); a list is taken as is."""
    where = "job"
    if isinstance(node, yaml.SequenceNode):
        argv = tuple(_argument(ctx, n) for n in node.value)
    else:
        text = y.scalar(ctx, node, where, "command", "a command line or a list of arguments", y.nonempty_text)
        try:
            argv = tuple(shlex.split(text, comments=False, posix=True))
        except ValueError as exc:
            raise ctx.fail(node, where, f"'command' cannot be split like a shell would: {exc}") from None
    if not argv or not argv[0]:
        raise ctx.fail(node, where, "'command' is empty; give the program to run, e.g. python train.py")
    return argv


def _argument(ctx: y.Ctx, node: yaml.Node) -> str:
    """One list item of `command`, exactly as written (`0.010` stays "0.010")."""
    if not isinstance(node, yaml.ScalarNode) or node.tag.endswith(":null"):
        raise ctx.fail(node, "job", f"each 'command' argument must be text, got {y.kind(node)}")
    if any(c in node.value for c in "\0\r\n"):
        raise ctx.fail(node, "job", "a 'command' argument must be one line without NUL bytes")
    return node.value


def _globs(ctx: y.Ctx, node: yaml.Node) -> tuple[str, ...]:
    nodes = node.value if isinstance(node, yaml.SequenceNode) else [node]
    out = []
    for n in nodes:
        glob = y.scalar(ctx, n, "job", "outputs", "a glob relative to the run's working directory", y.single_line)
        if glob.startswith("/") or ".." in Path(glob).parts:
            raise ctx.fail(n, "job", f"'outputs' entry {glob!r} must stay inside the run's working "
                           "directory (relative, no '..')")
        out.append(glob)
    return tuple(out)


def _ssh(ctx: y.Ctx, node: yaml.Node | None) -> Ssh:
    if node is None:
        return Ssh()
    keys = y.mapping(ctx, node, "ssh", SSH_KEYS)
    values: dict[str, Any] = {}
    for key, n in keys.items():
        if key == "known_hosts":
            if isinstance(n, yaml.SequenceNode):
                values[key] = tuple(y.scalar(ctx, c, "ssh", key, "a file path", y.single_line) for c in n.value)
            else:
                values[key] = (y.scalar(ctx, n, "ssh", key, "a file path or a list of them", y.single_line),)
        elif key == "accept_new_host_keys":
            values[key] = y.scalar(ctx, n, "ssh", key, "true or false", y.boolean)
        elif key == "config":
            values[key] = y.scalar(ctx, n, "ssh", key, "a file path", y.single_line)
        else:
            values[key] = y.scalar(ctx, n, "ssh", key, "a positive number of seconds", y.positive_number)
    return Ssh(**values)


def _defaults(ctx: y.Ctx, node: yaml.Node | None, environ: dict[str, str]) -> dict[str, Any]:
    if node is None:
        return {}
    keys = y.mapping(ctx, node, "defaults", HOST_KEYS)
    for only_per_host in ("name", "address"):
        if only_per_host in keys:
            raise ctx.fail(keys[only_per_host], "defaults",
                           f"'{only_per_host}' belongs to each host, not to defaults")
    return _host_fields(ctx, keys, "defaults", environ)


def parse_inventory(text: str, path: str = "inventory.yaml", environ: dict[str, str] | None = None,
                    overrides: tuple[str, ...] = (), check_files: bool = True) -> Inventory:
    """Validate inventory text, with `--set KEY=VALUE` overrides applied first (orchestrator/inventory/overrides.py);
    raises InventoryError naming file, line and field (or the override)."""
    environ = dict(os.environ if environ is None else environ)
    if len(text) > MAX_BYTES:
        raise InventoryError(f"{path}:1: the inventory is larger than 1 MiB; is this the right file?")
    if not text.strip():  # before YAML, which reads a line of just a tab as bad indentation
        raise InventoryError(f"{path}:1: the inventory is empty: it needs at least 'hosts:'")
    if "\0" in text:
        line = text[: text.index("\0")].count("\n") + 1
        raise InventoryError(f"{path}:{line}: not a YAML text file (it contains NUL bytes)")
    try:
        loader = y.Loader(text, path)  # reads the whole text: refuses control characters here
    except yaml.YAMLError as exc:
        raise y.yaml_error(exc, path, text) from None
    ctx = y.Ctx(path, loader)
    ctx.check_files = check_files  # `init` writes an inventory for keys that may not exist yet
    try:
        root = loader.get_single_node()
        if root is None or (isinstance(root, yaml.ScalarNode) and root.tag.endswith(":null")):
            raise InventoryError(f"{path}:1: the inventory is empty: it needs at least 'hosts:'")
        if not isinstance(root, yaml.MappingNode):
            raise ctx.fail(root, "", f"the inventory must be a mapping with 'hosts:', got {y.kind(root)}")
        if overrides:
            from orchestrator.inventory.overrides import apply_overrides

            apply_overrides(root, overrides)
        top = y.mapping(ctx, root, "", TOP_KEYS)
        defaults = _defaults(ctx, top.get("defaults"), environ)
        if "slurm" in top:
            return _slurm_inventory(ctx, top, defaults, environ, overrides)
        hosts = _hosts(ctx, top.get("hosts"), defaults, environ)
        job = _job(ctx, top.get("job"), environ)
        if job.min_hosts is not None and job.min_hosts > len(hosts):
            node = y.mapping(ctx, top["job"], "job", JOB_KEYS)["min_hosts"]
            raise ctx.fail(node, "job", f"'min_hosts' is {job.min_hosts} but the inventory has "
                           f"{len(hosts)} host(s)")
        return Inventory(path=path, hosts=hosts, job=job, ssh=_ssh(ctx, top.get("ssh")), overrides=tuple(overrides))
    except yaml.YAMLError as exc:
        raise y.yaml_error(exc, path, text) from None
    except RecursionError:  # MAX_DEPTH should make this unreachable; a traceback would be worse
        raise InventoryError(f"{path}:1: not valid YAML: nested too deeply") from None
    finally:
        loader.dispose()


def _slurm_inventory(ctx: y.Ctx, top: dict[str, yaml.Node], defaults: dict[str, Any], environ: dict[str, str],
                     overrides: tuple[str, ...]) -> Inventory:
    """`slurm:` instead of `hosts:` (orchestrator/inventory/slurm.py); the job is read as always."""
    if "hosts" in top:
        raise ctx.fail(top["hosts"], "", "'hosts' and 'slurm' exclude each other: list SSH hosts, or "
                       "name a Slurm login node, not both")
    job = _job(ctx, top.get("job"), environ)
    written = y.mapping(ctx, top["job"], "job", JOB_KEYS) if "job" in top else {}
    if "min_hosts" in written:
        raise ctx.fail(written["min_hosts"], "job", "'min_hosts' does not apply on Slurm: the allocation's "
                       "nodes are fixed for the job")
    slurm = parse_slurm(ctx, top["slurm"], job.port if "port" in written else None,
                        lambda node: _slurm_login(ctx, node, defaults))
    return Inventory(path=ctx.path, hosts=(), job=job, ssh=_ssh(ctx, top.get("ssh")), overrides=tuple(overrides),
                     slurm=slurm)


def _slurm_login(ctx: y.Ctx, node: yaml.Node, defaults: dict[str, Any]) -> Host:
    """The `slurm.login` host: an address or a host mapping, over the SSH defaults."""
    where = "slurm.login"
    if isinstance(node, yaml.ScalarNode):  # `login: hpc-login`: an address or ssh_config alias
        own = {"address": y.scalar(ctx, node, where, "login", "a host name or mapping", y.single_line)}
    else:
        keys = y.mapping(ctx, node, where, LOGIN_KEYS)
        if "address" not in keys:
            raise ctx.fail(node, where, "'address' is missing")
        own = _host_fields(ctx, keys, where, {})
    fields = {k: v for k, v in defaults.items() if k in ("user", "port", "identity_file", "python", "workdir", "env")}
    if "slots" in defaults or "connection" in defaults:
        raise ctx.fail(node, "defaults", "with 'slurm', 'slots' belongs to slurm: (ranks per node), and the "
                       "login node is reached over SSH")
    return Host(name=LOGIN_NAME, **{**fields, **own})


def load_inventory(path: str | os.PathLike[str], environ: dict[str, str] | None = None,
                   overrides: tuple[str, ...] = ()) -> Inventory:
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
    return parse_inventory(text, shown, environ, overrides)
