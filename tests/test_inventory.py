"""The inventory: every malformed file is one line naming file, line and field; precedence by name.

Each bad case runs through `parse_inventory` (text) and `load_inventory` (bytes on disk) and must
give exactly the message in the table. A sample also runs `distctl up <file> --dry-run` three ways:
in-process with CliRunner, through the console script's `main()`, and as a real process; each must
exit 2 with exactly one `distctl: error:` line and no traceback.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main as cli_module
from orchestrator.cli.main import cli
from orchestrator.errors import ExitCode, InventoryError
from orchestrator.inventory.model import MNIST_FILES, EnvVar, Job, Ssh, Train, load_inventory, parse_inventory

ENVIRON = {"TOKEN_SRC": "s3cret value", "OTHER_SRC": "other"}
UNSET = "DISTCTL_TEST_NEVER_SET"
HOSTS = "hosts:\n  - {name: node1, address: 10.0.0.1}\n"


def _billion_laughs() -> str:
    """The classic bomb: 10 levels of 10 aliases each, a 10**10-element list if expanded."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    return "\n".join(lines) + "\nhosts: *a9\n"


def _bomb_as_key() -> str:
    """Anchors defined inside one key, so nothing is validated before the key is shown."""
    inner = "&b0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"
    for i in range(1, 8):
        inner = f"&b{i} [{inner}, {', '.join([f'*b{i - 1}'] * 9)}]"
    return f"hosts:\n  - name: node1\n    address: 10.0.0.1\n    env:\n      ? {inner}\n      : x\n"


def bad(case_id: str, text: str | bytes, message: str):
    return pytest.param(text, message, id=case_id)


# (id, file contents, the exact message; <dir> is the inventory's folder)
BAD = [
    # YAML syntax
    bad("yaml-bad-indentation", "hosts:\n  - name: node1\n   address: 10.0.0.1\n",
        "inventory.yaml:3: not valid YAML: expected <block end>, but found '<block mapping start>' "
        "(while parsing a block collection started on line 2); check the indentation"),
    bad("yaml-unclosed-quote", "hosts:\n  - name: 'node1\n    address: 10.0.0.1\n",
        "inventory.yaml:4: not valid YAML: found unexpected end of stream "
        "(while scanning a quoted scalar started on line 2); is a quote or bracket left open?"),
    bad("yaml-unclosed-bracket", "hosts: [{name: node1, address: 10.0.0.1}\n",
        "inventory.yaml:2: not valid YAML: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence started on line 1); is a quote or bracket left open?"),
    bad("yaml-unclosed-brace", "hosts:\n  - {name: node1, address: 10.0.0.1\n",
        "inventory.yaml:3: not valid YAML: expected ',' or '}', but got '<stream end>' "
        "(while parsing a flow mapping started on line 2); is a quote or bracket left open?"),
    bad("yaml-tab-indentation", "hosts:\n\t- {name: node1, address: 10.0.0.1}\n",
        "inventory.yaml:2: not valid YAML: found character '\\t' that cannot start any token; "
        "indent with spaces, not tabs"),
    bad("yaml-colon-in-value", "hosts:\n  - name: node1: x\n",
        "inventory.yaml:2: not valid YAML: mapping values are not allowed here"),
    bad("yaml-two-documents", HOSTS + "---\n" + HOSTS,
        "inventory.yaml:3: not valid YAML: expected a single document in the stream, but found another "
        "document; an inventory is one document: remove the second '---'"),
    bad("yaml-undefined-alias", "hosts: *nodes\n",
        "inventory.yaml:1: not valid YAML: found undefined alias 'nodes'"),
    bad("yaml-unknown-tag", "hosts:\n  - {name: node1, address: 10.0.0.1, user: !vault abc}\n",
        "inventory.yaml:2: not valid YAML: could not determine a constructor for the tag '!vault'"),
    bad("yaml-invalid-date", "hosts:\n  - {name: node1, address: 10.0.0.1, workdir: 2024-13-45}\n",
        "inventory.yaml:2: hosts[0] (node1): '2024-13-45' is not a valid timestamp; "
        "quote it if you mean the text"),
    bad("yaml-bad-explicit-int", "hosts:\n  - {name: node1, address: 10.0.0.1, port: !!int abc}\n",
        "inventory.yaml:2: hosts[0] (node1): 'abc' is not a valid int; quote it if you mean the text"),
    bad("yaml-merge-key-in-host", "defaults: &d {user: root}\nhosts:\n  - {<<: *d, name: n, address: a}\n",
        "inventory.yaml:3: hosts[0] (n): '<<' merge keys are not supported; "
        "put keys that hosts share under 'defaults:'"),
    # wrong types
    bad("slots-two", "hosts:\n  - {name: node1, address: 10.0.0.1, slots: two}\n",
        "inventory.yaml:2: hosts[0] (node1): 'slots' must be a positive integer, got 'two'"),
    bad("port-22x", 'hosts:\n  - {name: node1, address: 10.0.0.1, port: "22x"}\n',
        "inventory.yaml:2: hosts[0] (node1): 'port' must be a port number from 1 to 65535, got '22x'"),
    bad("lr-fast", HOSTS + "job:\n  train: {lr: fast}\n",
        "inventory.yaml:4: job.train: 'lr' must be a positive number, got 'fast'"),
    bad("lr-infinite", HOSTS + "job:\n  train: {lr: .inf}\n",
        "inventory.yaml:4: job.train: 'lr' must be a positive number, got inf"),
    bad("epochs-zero", HOSTS + "job:\n  train:\n    epochs: 0\n",
        "inventory.yaml:5: job.train: 'epochs' must be a positive integer, got 0"),
    bad("env-as-list", "hosts:\n  - name: node1\n    address: 10.0.0.1\n    env: [A=1]\n",
        "inventory.yaml:4: hosts[0] (node1): 'env' must be a mapping of NAME: value, got a list"),
    bad("hosts-as-mapping", "hosts:\n  node1: {address: 10.0.0.1}\n",
        "inventory.yaml:2: hosts: must be a list of hosts, got a mapping"),
    bad("host-is-a-string", "hosts:\n  - node1\n",
        "inventory.yaml:2: hosts[0]: each host must be a mapping like {name: node1, address: 10.0.0.1}, "
        "got 'node1'"),
    bad("user-yes", "hosts:\n  - {name: node1, address: 10.0.0.1, user: yes}\n",
        "inventory.yaml:2: hosts[0] (node1): 'user' must be a user name, got yes "
        "(YAML reads it as True); write it in quotes: 'yes'"),
    bad("python-version-number", "defaults:\n  python: 3.10\n" + HOSTS,
        "inventory.yaml:2: defaults: 'python' must be a command or path, got 3.10 "
        "(YAML reads it as 3.1); write it in quotes: '3.10'"),
    bad("accept-new-host-keys-text", HOSTS + "ssh: {accept_new_host_keys: always}\n",
        "inventory.yaml:3: ssh: 'accept_new_host_keys' must be true or false, got 'always'"),
    bad("job-as-list", HOSTS + "job: [mnist]\n",
        "inventory.yaml:3: job: must be a mapping of keys, got a list"),
    bad("host-name-with-space", "hosts:\n  - {name: node 1, address: 10.0.0.1}\n",
        "inventory.yaml:2: hosts[0]: 'name' must be a name of letters, digits, '.', '_' or '-', "
        "got 'node 1'"),
    bad("connection-telnet", "hosts:\n  - {name: node1, address: 10.0.0.1, connection: telnet}\n",
        "inventory.yaml:2: hosts[0] (node1): 'connection' must be 'ssh' or 'local', got 'telnet'"),
    bad("address-missing", "hosts:\n  - {name: node1, user: root}\n",
        "inventory.yaml:2: hosts[0] (node1): missing 'address'"),
    bad("identity-file-missing", "hosts:\n  - name: node1\n    address: 10.0.0.1\n"
        "    identity_file: /nonexistent/id_ed25519\n",
        "inventory.yaml:4: hosts[0] (node1): identity_file /nonexistent/id_ed25519 does not exist"),
    bad("identity-file-missing-in-defaults", "defaults: {identity_file: /nonexistent/key}\n" + HOSTS,
        "inventory.yaml:1: defaults: identity_file /nonexistent/key does not exist"),
    # unknown keys
    bad("unknown-key-top", "hots:\n  - {name: node1, address: 10.0.0.1}\n",
        "inventory.yaml:1: unknown key 'hots' (did you mean 'hosts'?)"),
    bad("unknown-key-top-no-match", HOSTS + "cluster: big\n",
        "inventory.yaml:3: unknown key 'cluster' (known keys: defaults, hosts, job, ssh, slurm)"),
    bad("unknown-key-defaults", "defaults: {usr: root}\n" + HOSTS,
        "inventory.yaml:1: defaults: unknown key 'usr' (did you mean 'user'?)"),
    bad("unknown-key-host", "hosts:\n  - name: node1\n    adress: 10.0.0.1\n",
        "inventory.yaml:3: hosts[0] (node1): unknown key 'adress' (did you mean 'address'?)"),
    bad("unknown-key-job", HOSTS + "job:\n  bakend: gloo\n",
        "inventory.yaml:4: job: unknown key 'bakend' (did you mean 'backend'?)"),
    bad("unknown-key-train", HOSTS + "job:\n  train: {epoch: 3}\n",
        "inventory.yaml:4: job.train: unknown key 'epoch' (did you mean 'epochs'?)"),
    bad("unknown-key-ssh", HOSTS + "ssh:\n  known_host: ~/.ssh/kh\n",
        "inventory.yaml:4: ssh: unknown key 'known_host' (did you mean 'known_hosts'?)"),
    # duplicates
    bad("duplicate-host-name", HOSTS + "  - {name: node1, address: 10.0.0.2}\n",
        "inventory.yaml:3: hosts[1] (node1): duplicate host name 'node1' (first on line 2)"),
    bad("duplicate-address-and-port",
        "hosts:\n  - {name: a, address: 10.0.0.1, port: 22}\n  - {name: b, address: 10.0.0.1, port: 22}\n",
        "inventory.yaml:3: hosts[1] (b): same address and port as 'a' (line 2); "
        "give one host more 'slots' instead"),
    bad("duplicate-key-in-host", "hosts:\n  - name: node1\n    address: a\n    address: b\n",
        "inventory.yaml:4: hosts[0] (node1): key 'address' is given twice"),
    bad("duplicate-key-top", HOSTS + HOSTS,
        "inventory.yaml:3: key 'hosts' is given twice"),
    bad("duplicate-env-name", "defaults:\n  env: {A: 1, A: 2}\n" + HOSTS,
        "inventory.yaml:2: defaults: env 'A' is given twice"),
    # slots and ports
    bad("slots-zero", "hosts:\n  - {name: node1, address: 10.0.0.1, slots: 0}\n",
        "inventory.yaml:2: hosts[0] (node1): 'slots' must be a positive integer, got 0"),
    bad("slots-negative", "defaults: {slots: -2}\n" + HOSTS,
        "inventory.yaml:1: defaults: 'slots' must be a positive integer, got -2"),
    bad("port-zero", "hosts:\n  - {name: node1, address: 10.0.0.1, port: 0}\n",
        "inventory.yaml:2: hosts[0] (node1): 'port' must be a port number from 1 to 65535, got 0"),
    bad("port-70000", "hosts:\n  - {name: node1, address: 10.0.0.1, port: 70000}\n",
        "inventory.yaml:2: hosts[0] (node1): 'port' must be a port number from 1 to 65535, got 70000"),
    bad("job-port-negative", HOSTS + "job: {port: -1}\n",
        "inventory.yaml:3: job: 'port' must be a port number from 1 to 65535, got -1"),
    # no hosts, nothing at all
    bad("hosts-missing", "job: {name: mnist}\n",
        "inventory.yaml:1: 'hosts' is missing; list at least one host under 'hosts:'"),
    bad("hosts-empty-list", "hosts: []\n",
        "inventory.yaml:1: hosts: the list is empty; add at least one host"),
    bad("hosts-null", "job: {name: mnist}\nhosts:\n",
        "inventory.yaml:2: hosts: the list is empty; add at least one host"),
    bad("empty-file", "", "inventory.yaml:1: the inventory is empty: it needs at least 'hosts:'"),
    bad("whitespace-only", "  \n\n   \n\t\n", "inventory.yaml:1: the inventory is empty: it needs at least 'hosts:'"),
    bad("comments-only", "# hosts: []\n---\n", "inventory.yaml:1: the inventory is empty: it needs at least 'hosts:'"),
    bad("top-level-list", "- {name: node1, address: 10.0.0.1}\n",
        "inventory.yaml:1: the inventory must be a mapping with 'hosts:', got a list"),
    bad("top-level-scalar", "node1\n",
        "inventory.yaml:1: the inventory must be a mapping with 'hosts:', got 'node1'"),
    # not text
    bad("garbage-random-bytes", b"\x00\x01\xff\xfe" + random.Random(7).randbytes(4096),
        "inventory.yaml:1: not a UTF-8 text file"),
    bad("invalid-utf8", b"hosts:\n  - {name: node1, address: caf\xe9}\n",
        "inventory.yaml:2: not a UTF-8 text file"),
    bad("nul-bytes", "hosts:\n  - {name: node1,\0\0 address: 10.0.0.1}\n",
        "inventory.yaml:2: not a YAML text file (it contains NUL bytes)"),
    bad("control-character", HOSTS + "job: {name: mn\x07ist}\n",
        "inventory.yaml:3: not a YAML text file (it contains the control character U+0007)"),
    bad("huge-file", HOSTS + ("# padding" + " " * 90 + "\n") * 11000,
        "inventory.yaml:1: the inventory is larger than 1 MiB; is this the right file?"),
    # addresses
    bad("address-empty", "hosts:\n  - {name: node1, address: ''}\n",
        "inventory.yaml:2: hosts[0] (node1): 'address' must be a host name, IP address or ssh_config alias, "
        "got ''"),
    bad("address-with-newline", 'hosts:\n  - {name: node1, address: "10.0.0.1\\nrm -rf /"}\n',
        "inventory.yaml:2: hosts[0] (node1): 'address' must be a host name, IP address or ssh_config alias, "
        "got '10.0.0.1\\nrm -rf /'"),
    bad("name-in-defaults", "defaults: {name: node}\n" + HOSTS,
        "inventory.yaml:1: defaults: 'name' belongs to each host, not to defaults"),
    bad("address-in-defaults", "defaults:\n  user: root\n  address: 10.0.0.1\n" + HOSTS,
        "inventory.yaml:3: defaults: 'address' belongs to each host, not to defaults"),
    # env and secrets
    bad("env-name-leading-digit", "hosts:\n  - {name: node1, address: 10.0.0.1, env: {1BAD: x}}\n",
        "inventory.yaml:2: hosts[0] (node1): env name '1BAD' is not a valid variable name "
        "(letters, digits and _, not starting with a digit)"),
    bad("env-name-dash", HOSTS + "job:\n  env: {A-B: x}\n",
        "inventory.yaml:4: job: env name 'A-B' is not a valid variable name "
        "(letters, digits and _, not starting with a digit)"),
    bad("env-name-space", HOSTS + "job:\n  env: {'A B': x}\n",
        "inventory.yaml:4: job: env name 'A B' is not a valid variable name "
        "(letters, digits and _, not starting with a digit)"),
    bad("env-value-nul", HOSTS + 'job:\n  env: {A: "x\\0y"}\n',
        "inventory.yaml:4: job: env 'A': must not contain a NUL byte"),
    bad("env-value-null", HOSTS + "job:\n  env: {A: }\n",
        "inventory.yaml:4: job: env 'A': must be a string, number or {from_env: VAR}, got nothing"),
    bad("secret-unset", HOSTS + f"job:\n  env: {{TOKEN: {{from_env: {UNSET}}}}}\n",
        f"inventory.yaml:4: job: env 'TOKEN': secret variable ${UNSET} is not set in this shell "
        f"(export {UNSET}=... before running distctl)"),
    bad("secret-unknown-key", HOSTS + "job:\n  env:\n    TOKEN: {from_envv: TOKEN_SRC}\n",
        "inventory.yaml:5: job: env 'TOKEN': unknown key 'from_envv' (did you mean 'from_env'?)"),
    bad("secret-empty", HOSTS + "job:\n  env:\n    TOKEN: {}\n",
        "inventory.yaml:5: job: env 'TOKEN': a secret needs 'from_env: VARIABLE'"),
    # job choices and data
    bad("backend-mpi", HOSTS + "job: {backend: mpi}\n",
        "inventory.yaml:3: job: 'backend' must be one of auto, nccl, gloo, got 'mpi'"),
    bad("dataset-imagenet", HOSTS + "job: {dataset: imagenet}\n",
        "inventory.yaml:3: job: 'dataset' must be one of mnist, generated, got 'imagenet'"),
    bad("fallback-random", HOSTS + "job: {fallback: random}\n",
        "inventory.yaml:3: job: 'fallback' must be one of none, generated, got 'random'"),
    bad("data-folder-missing", HOSTS + "job:\n  data: missing\n",
        "inventory.yaml:4: job: 'data' folder 'missing' does not exist (looked in <dir>/missing)"),
    bad("data-is-a-file", HOSTS + "job:\n  data: /dev/null\n",
        "inventory.yaml:4: job: 'data' folder '/dev/null' is not a folder (looked in /dev/null)"),
    # hostile structure: refused while composing, before anything is expanded or walked
    bad("billion-laughs", _billion_laughs(),
        "inventory.yaml:5: more than 100000 values (each alias counted as a copy); an inventory needs far fewer"),
    bad("billion-laughs-as-key", _bomb_as_key(),
        "inventory.yaml:5: more than 100000 values (each alias counted as a copy); an inventory needs far fewer"),
    bad("alias-inside-itself", "hosts: &h [{name: a, address: b, env: *h}]\n",
        "inventory.yaml:1: alias *h is inside its own anchor &h"),
    bad("deep-nesting-flow", "hosts: " + "[\n" * 1000 + "]" * 1000 + "\n",
        "inventory.yaml:20: nested more than 20 levels deep"),
    bad("deep-nesting-block", "hosts:\n" + "".join("  " * i + "- \n" for i in range(100)),
        "inventory.yaml:21: nested more than 20 levels deep"),
]
TEXT_CASES = [c for c in BAD if isinstance(c.values[0], str)]
IDS = {c.id: c for c in BAD}


def _expected(message: str, folder: Path) -> str:
    return message.replace("<dir>", str(folder))


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run where the inventory is, so messages name `inventory.yaml` just as a user would type it."""
    monkeypatch.chdir(tmp_path)
    for name, value in ENVIRON.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(UNSET, raising=False)
    return tmp_path


def _write(folder: Path, contents: str | bytes) -> Path:
    path = folder / "inventory.yaml"
    path.write_bytes(contents.encode() if isinstance(contents, str) else contents)
    return path


def test_the_corpus_is_large_and_ids_are_unique():
    assert len(BAD) >= 35
    assert len(IDS) == len(BAD)


@pytest.mark.parametrize(("text", "message"), TEXT_CASES)
def test_parse_inventory_names_file_line_and_field(in_tmp, text, message):
    with pytest.raises(InventoryError) as err:
        parse_inventory(text, "inventory.yaml", ENVIRON)
    assert str(err.value) == _expected(message, in_tmp)
    assert err.value.exit_code == ExitCode.BAD_INPUT == 2


@pytest.mark.parametrize(("contents", "message"), BAD)
def test_load_inventory_names_file_line_and_field(in_tmp, contents, message):
    _write(in_tmp, contents)
    with pytest.raises(InventoryError) as err:
        load_inventory("inventory.yaml", ENVIRON)
    assert str(err.value) == _expected(message, in_tmp)
    assert "\n" not in str(err.value)
    assert err.value.exit_code == 2


CLI_SAMPLE = ["garbage-random-bytes", "huge-file", "invalid-utf8", "nul-bytes", "yaml-tab-indentation",
              "unknown-key-host", "slots-two", "secret-unset", "empty-file", "top-level-list", "billion-laughs",
              "deep-nesting-flow", "data-folder-missing"]


@pytest.mark.parametrize("case_id", CLI_SAMPLE)
def test_cli_up_dry_run_exits_2_with_one_line(in_tmp, case_id):
    contents, message = IDS[case_id].values
    _write(in_tmp, contents)
    result = CliRunner().invoke(cli, ["up", "inventory.yaml", "--dry-run"])
    assert result.exit_code == 2, result.output
    assert result.stderr == f"distctl: error: {_expected(message, in_tmp)}\n"
    assert result.stdout == ""
    assert "Traceback" not in result.output


@pytest.mark.parametrize("case_id", CLI_SAMPLE)
def test_cli_main_exits_2_with_one_line(in_tmp, monkeypatch, capsys, case_id):
    contents, message = IDS[case_id].values
    _write(in_tmp, contents)
    monkeypatch.setattr(sys, "argv", ["distctl", "up", "inventory.yaml", "--dry-run"])
    with pytest.raises(SystemExit) as done:
        cli_module.main()
    assert done.value.code == 2
    out, err = capsys.readouterr()
    assert err == f"distctl: error: {_expected(message, in_tmp)}\n"
    assert out == ""


DISTCTL = Path(sys.executable).with_name("distctl")


@pytest.mark.skipif(not DISTCTL.exists(), reason="the distctl console script is not installed next to python")
@pytest.mark.parametrize("case_id", ["garbage-random-bytes", "huge-file", "unknown-key-host", "billion-laughs"])
def test_distctl_process_exits_2_with_one_line(tmp_path, case_id):
    contents, message = IDS[case_id].values
    _write(tmp_path, contents)
    env = {k: v for k, v in os.environ.items() if k != UNSET}
    done = subprocess.run([str(DISTCTL), "up", "inventory.yaml", "--dry-run"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"distctl: error: {_expected(message, tmp_path)}"]
    assert done.stderr.startswith("distctl: error: ")
    assert "Traceback" not in done.stderr + done.stdout


def test_unreadable_inventory_says_why(in_tmp):
    with pytest.raises(InventoryError) as err:
        load_inventory("nowhere.yaml", ENVIRON)
    assert str(err.value) == "nowhere.yaml: cannot read the inventory: No such file or directory"


# ---------------------------------------------------------------- valid inventories and precedence


def parse(text: str, environ: dict[str, str] | None = None):
    return parse_inventory(text, "inventory.yaml", ENVIRON if environ is None else environ)


@pytest.mark.parametrize(("key", "default", "own", "expected_default", "expected_own"), [
    ("user", "root", "alice", "root", "alice"),
    ("port", "2222", "22", 2222, 22),
    ("identity_file", "/etc/passwd", "/etc/group", "/etc/passwd", "/etc/group"),  # files that exist
    ("python", "/opt/a/python", "/opt/b/python", "/opt/a/python", "/opt/b/python"),
    ("workdir", "/scratch/a", "/scratch/b", "/scratch/a", "/scratch/b"),
    ("slots", "2", "8", 2, 8),
    ("connection", "local", "ssh", "local", "ssh"),
], ids=lambda v: v if isinstance(v, str) and v.isidentifier() else None)
def test_a_hosts_own_key_wins_over_defaults(key, default, own, expected_default, expected_own):
    inv = parse(f"defaults: {{{key}: {default}}}\n"
                "hosts:\n"
                f"  - {{name: mine, address: 10.0.0.1, {key}: {own}}}\n"
                "  - {name: inherits, address: 10.0.0.2}\n")
    assert getattr(inv.host("mine"), key) == expected_own
    assert getattr(inv.host("inherits"), key) == expected_default


def test_keys_absent_everywhere_take_the_built_in_defaults():
    host = parse(HOSTS).hosts[0]
    assert (host.connection, host.user, host.port, host.identity_file) == ("ssh", None, None, None)
    assert (host.python, host.workdir, host.slots, host.env, host.line) == ("python3", "~/.distctl", None, (), 2)


def test_env_merges_name_by_name_and_the_host_wins():
    inv = parse("defaults:\n  env: {A: from-defaults, B: from-defaults}\n"
                "hosts:\n"
                "  - {name: mine, address: 10.0.0.1, env: {B: own, C: own}}\n"
                "  - {name: inherits, address: 10.0.0.2}\n")
    assert inv.host("mine").env == (EnvVar("A", "from-defaults"), EnvVar("B", "own"), EnvVar("C", "own"))
    assert inv.host("inherits").env == (EnvVar("A", "from-defaults"), EnvVar("B", "from-defaults"))


def test_env_values_are_taken_as_written():
    inv = parse(HOSTS + "job:\n  env: {UMASK: 0022, FLAG: yes, N: 4, R: 1.50, Q: 'quoted: yes'}\n")
    assert {v.name: v.value for v in inv.job.env} == {
        "UMASK": "0022", "FLAG": "yes", "N": "4", "R": "1.50", "Q": "quoted: yes"}


def test_local_connection_gets_localhost_and_this_python():
    inv = parse("hosts:\n  - {name: here, connection: local, slots: 2}\n")
    host = inv.host("here")
    assert (host.address, host.python, host.is_local) == ("localhost", sys.executable, True)


def test_local_connection_keeps_a_given_address_and_python():
    inv = parse("hosts:\n  - {name: here, connection: local, address: 127.0.0.1, python: /usr/bin/python3}\n")
    assert (inv.hosts[0].address, inv.hosts[0].python) == ("127.0.0.1", "/usr/bin/python3")


def test_local_connection_from_defaults_applies_to_every_host():
    inv = parse("defaults: {connection: local}\nhosts:\n  - {name: a}\n  - {name: b}\n")
    assert [(h.address, h.python, h.is_local) for h in inv.hosts] == [
        ("localhost", sys.executable, True), ("localhost", sys.executable, True)]


def test_secrets_are_read_from_the_given_environ_and_marked_secret():
    inv = parse("defaults:\n  env: {TOKEN: {from_env: TOKEN_SRC}}\n" + HOSTS
                + "job:\n  env: {PLAIN: visible, OTHER: {from_env: OTHER_SRC}}\n")
    assert inv.hosts[0].env == (EnvVar("TOKEN", "s3cret value", secret=True),)
    assert inv.hosts[0].env[0].shown == "***"
    assert inv.job.env == (EnvVar("PLAIN", "visible"), EnvVar("OTHER", "other", secret=True))
    assert inv.job.env[0].shown == "visible"


def test_secrets_come_from_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("DISTCTL_TEST_SECRET", "from-os")
    inv = parse_inventory(HOSTS + "job:\n  env: {T: {from_env: DISTCTL_TEST_SECRET}}\n")
    assert inv.job.env == (EnvVar("T", "from-os", secret=True),)


def test_job_data_is_relative_to_the_inventorys_folder(tmp_path, monkeypatch):
    raw = tmp_path / "conf" / "mnist-data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        (raw / name).write_bytes(b"")
    (tmp_path / "conf" / "inventory.yaml").write_text(HOSTS + "job: {data: mnist-data}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    inv = load_inventory("../conf/inventory.yaml", ENVIRON)
    assert inv.job.data == str((tmp_path / "conf" / "mnist-data").resolve())


def test_job_train_and_ssh_take_given_values_and_defaults():
    inv = parse(HOSTS + "job:\n  name: run-1\n  port: 29500\n  backend: gloo\n  dataset: generated\n"
                "  fallback: generated\n  join_timeout: 60\n  train: {epochs: 3, lr: 0.1}\n"
                "ssh: {known_hosts: /etc/kh, accept_new_host_keys: true, connect_timeout: 2.5}\n")
    assert inv.job == Job(name="run-1", port=29500, backend="gloo", dataset="generated", fallback="generated",
                          join_timeout=60.0, train=Train(epochs=3, lr=0.1))
    assert inv.ssh == Ssh(known_hosts=("/etc/kh",), accept_new_host_keys=True, connect_timeout=2.5)
    assert parse(HOSTS).job == Job() and parse(HOSTS).ssh == Ssh()


def test_ordinary_anchors_and_aliases_still_work():
    inv = parse("hosts:\n"
                "  - {name: a, address: 10.0.0.1, env: &common {NCCL_DEBUG: WARN}}\n"
                "  - {name: b, address: 10.0.0.2, env: *common}\n")
    assert inv.host("a").env == inv.host("b").env == (EnvVar("NCCL_DEBUG", "WARN"),)


def test_local_hosts_may_share_an_address():
    inv = parse("hosts:\n  - {name: a, connection: local}\n  - {name: b, connection: local}\n")
    assert [h.address for h in inv.hosts] == ["localhost", "localhost"]


def test_the_shipped_inventory_is_valid():
    inv = load_inventory(Path(__file__).parent.parent / "inventory.yaml", {})
    assert [(h.name, h.is_local, h.slots) for h in inv.hosts] == [("local", True, 2)]


# ---------------------------------------------------------------- user programs (job.command)


def test_command_string_is_split_like_a_shell_without_evaluating_it():
    inv = parse(HOSTS + "job:\n  command: python train.py --name 'a b' $HOME\n")
    assert inv.job.command == ("python", "train.py", "--name", "a b", "$HOME")
    assert not inv.job.is_trainer


def test_command_list_keeps_each_argument_as_written():
    inv = parse(HOSTS + "job:\n  command: [python, -u, train.py, --lr, 0.010, '']\n")
    assert inv.job.command == ("python", "-u", "train.py", "--lr", "0.010", "")


@pytest.mark.parametrize("job, message", [
    ("job:\n  command: python t.py\n  train: {epochs: 1}\n",
     "inventory.yaml:5: job: 'train' configures the bundled trainer, but 'command' runs your own program; "
     "remove one of them (pass your program's options in 'command')"),
    ("job:\n  command: \"python 'unclosed\"\n",
     "inventory.yaml:4: job: 'command' cannot be split like a shell would: No closing quotation"),
    ("job:\n  command: []\n",
     "inventory.yaml:4: job: 'command' is empty; give the program to run, e.g. python train.py"),
    ("job:\n  command: [python, {a: 1}]\n",
     "inventory.yaml:4: job: each 'command' argument must be text, got a mapping"),
    ("job:\n  command: python t.py\n  outputs: ['../secret']\n",
     "inventory.yaml:5: job: 'outputs' entry '../secret' must stay inside the run's working directory "
     "(relative, no '..')"),
    ("job:\n  wait_for_rank0: maybe\n",
     "inventory.yaml:4: job: 'wait_for_rank0' must be true or false, got 'maybe'"),
])
def test_user_program_keys_are_validated_with_file_and_line(job, message):
    with pytest.raises(InventoryError) as exc:
        parse(HOSTS + job)
    assert str(exc.value) == message


def test_data_one_level_too_deep_is_an_error_naming_the_right_folder(tmp_path):
    raw = tmp_path / "d" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (tmp_path / "inventory.yaml").write_text(HOSTS + "job: {data: d/MNIST/raw}\n")
    with pytest.raises(InventoryError) as exc:
        load_inventory(tmp_path / "inventory.yaml", ENVIRON)
    assert str(exc.value) == (
        f"{tmp_path / 'inventory.yaml'}:3: job: 'data' folder {raw} does not hold MNIST in torchvision's "
        f"layout: expected MNIST/raw/train-images-idx3-ubyte (or .gz) in it; point 'data' at {tmp_path / 'd'} "
        "(the folder that holds MNIST/)")


def test_user_program_data_and_code_are_any_folders(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "ds").mkdir()
    (tmp_path / "inventory.yaml").write_text(
        HOSTS + "job:\n  code: src\n  data: ds\n  command: python train.py\n  setup: pip install -r r.txt\n"
        "  outputs: [out/*.pt, metrics.json]\n  wait_for_rank0: false\n")
    job = load_inventory(tmp_path / "inventory.yaml", ENVIRON).job
    assert (job.code, job.data) == (str(tmp_path / "src"), str(tmp_path / "ds"))
    assert (job.setup, job.outputs, job.wait_for_rank0) == ("pip install -r r.txt", ("out/*.pt", "metrics.json"),
                                                            False)


# ---------------------------------------------------------------- --set overrides

TRAINER = HOSTS + "  - {name: node2, address: 10.0.0.2}\njob:\n  train: {epochs: 3}\n"


def test_set_overrides_values_like_the_file_would():
    inv = parse_inventory(TRAINER, "inventory.yaml", ENVIRON,
                          ("job.train.epochs=5", "job.train.lr=0.5", "hosts.node2.slots=2", "defaults.user=ubuntu",
                           "ssh.connect_timeout=3", "job.env={A: '1'}"))
    assert (inv.job.train.epochs, inv.job.train.lr, inv.job.train.batch_size) == (5, 0.5, 64)
    assert [h.slots for h in inv.hosts] == [None, 2] and {h.user for h in inv.hosts} == {"ubuntu"}
    assert inv.ssh.connect_timeout == 3 and [(v.name, v.value) for v in inv.job.env] == [("A", "1")]
    assert inv.overrides[0] == "job.train.epochs=5"


@pytest.mark.parametrize("override, message", [
    ("job.train.epochs=zero",
     "--set job.train.epochs=zero: job.train: 'epochs' must be a positive integer, got 'zero'"),
    ("job.train.epoch=5", "--set job.train.epoch=5: job.train: unknown key 'epoch' (did you mean 'epochs'?)"),
    ("hosts.node9.slots=2", "--set hosts.node9.slots=2: no host named 'node9' in the inventory"),
    ("epochs", "--set epochs: expected KEY=VALUE with a dotted key (e.g. --set job.train.epochs=5)"),
    ("job.name=[a", "--set job.name=[a: the value is not valid YAML: expected ',' or ']', but got '<stream end>'"),
    ("job.command=python t.py", "--set job.command=python t.py: job: 'train' configures the bundled trainer, "
     "but 'command' runs your own program; remove one of them (pass your program's options in 'command')"),
])
def test_a_bad_override_is_one_line_naming_it(override, message):
    with pytest.raises(InventoryError) as exc:
        parse_inventory(TRAINER, "inventory.yaml", ENVIRON, (override,))
    assert str(exc.value) == message


@pytest.mark.parametrize("command, name", [
    (None, "mnist"),
    (("python", "train.py", "--epochs", "3"), "train"),
    (("python3", "-u", "-W", "ignore", "src/fit.py"), "fit"),
    (("python", "-m", "pkg.finetune", "--lr", "1"), "finetune"),
    (("./run.sh",), "run"),
    (("/opt/bin/my trainer",), "my-trainer"),
    (("python", "-c", "print(1)"), "python"),
])
def test_run_ids_are_named_by_what_the_job_runs(command, name):
    """job.name has no default for a user program: its script names the runs (not `mnist-...`)."""
    job = f"job: {{command: {json.dumps(list(command))}}}\n" if command else ""
    assert parse_inventory(HOSTS + job, "inv.yaml").job.run_name == name
    assert parse_inventory(HOSTS + (job or "job: {}\n").replace("job: {", "job: {name: mine, "),
                           "inv.yaml").job.run_name == "mine"
