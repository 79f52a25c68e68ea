"""ssh_config resolved by distctl, compared field by field with OpenSSH's own `ssh -G`.

The differential cases write a config (and any included files) into a temp dir and always pass
`-F`, so this machine's ~/.ssh/config and /etc/ssh/ssh_config cannot matter. The oracle is
OpenSSH run directly here: `ssh -G` for every setting, and `ssh -v` (through a proxy command
that exits at once: nothing is dialled) for what `-G` prints unexpanded, the identity files and
the ProxyCommand. Each ProxyJump hop is resolved the way ssh.c builds its `ssh -W` child: the
last hop with `-J <the earlier ones>`, with `-F` but none of the target's `-l/-p/-i`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestrator.ssh import knownhosts
from orchestrator.ssh import remote
from orchestrator.ssh import config as sshconfig
from orchestrator.errors import ExitCode
from orchestrator.inventory.model import Host, Ssh
from orchestrator.ssh.config import SshConfigError, SshSettings

needs_ssh = pytest.mark.skipif(shutil.which("ssh") is None, reason="needs OpenSSH's ssh client")


@dataclass(frozen=True)
class Case:
    id: str
    config: str  # `{d}`: the case's temp dir
    alias: str
    user: str | None = None  # as written in the inventory: -l
    port: int | None = None  # -p
    identity: str | None = None  # -i (a file made in the temp dir)
    files: dict[str, str] = field(default_factory=dict)  # more files in the temp dir (Include)


CASES = [
    Case("no-config-entry", "", "plain.invalid"),
    Case("hostname-user-port", "Host web\n  HostName 10.0.0.5\n  User alice\n  Port 2200\n", "web"),
    Case("wildcard", "Host *.corp.invalid\n  User ops\n", "db1.corp.invalid"),
    Case("negation", "Host *.corp.invalid !db.corp.invalid\n  User ops\nHost *\n  User other\n",
         "db.corp.invalid"),
    Case("negation-other-host", "Host *.corp.invalid !db.corp.invalid\n  User ops\n", "web.corp.invalid"),
    Case("first-value-wins", "Host web\n  User first\nHost web\n  User second\n", "web"),
    Case("host-star-first-wins", "Host *\n  User everyone\n  Port 2022\nHost web\n  User alice\n  Port 22\n", "web"),
    Case("several-patterns", "Host a.invalid b.invalid c.invalid\n  HostName 10.1.1.1\n", "b.invalid"),
    Case("key-equals-value", "Host web\n  User=alice\n  Port = 2201\n  HostName= 10.0.0.6\n", "web"),
    Case("quoted-values", 'Host web\n  HostName "10.0.0.9"\n  IdentityFile "{d}/my key"\n', "web"),
    Case("trailing-comments", "Host web # the web box\n  HostName 10.0.0.2 # replica\n  Port 2201 # ssh\n"
         "  User bob # admin\n", "web"),
    Case("keywords-any-case-and-tabs", "HOST web\n\tHOSTNAME\t10.0.0.7\n\tuser\tcarol\n", "web"),
    Case("hostname-token", "Host db\n  HostName %h.internal.invalid\n", "db"),
    Case("identity-tokens", "Host web\n  HostName real.invalid\n  User ru\n  Port 2022\n"
         "  IdentityFile {d}/%h_%r_%p_%n_%u_%%\n  IdentityFile %d/.ssh/id_web\n", "web"),
    Case("identity-accumulates", "Host web\n  IdentityFile {d}/k1\nHost *\n  IdentityFile {d}/k2\n", "web"),
    Case("identities-only", "Host web\n  IdentityFile {d}/k1\n  IdentitiesOnly yes\n", "web"),
    Case("inventory-identity-first", "Host web\n  IdentityFile {d}/k1\n", "web", identity="inv_key"),
    Case("inventory-identity-identitiesonly", "Host web\n  IdentityFile {d}/k1\n  IdentitiesOnly yes\n", "web",
         identity="inv_key"),
    Case("inventory-user-wins", "Host web\n  User alice\n  Port 2200\n", "web", user="deploy"),
    Case("inventory-port-wins", "Host web\n  User alice\n  Port 2200\n", "web", port=2300),
    Case("include-absolute", "Include {d}/inc.conf\nHost *\n  User fallback\n", "inc-alias",
         files={"inc.conf": "Host inc-alias\n  HostName 10.9.9.9\n  User included\n"}),
    Case("include-glob-in-order", "Include {d}/conf.d/*.conf\n", "svc",
         files={"conf.d/20-b.conf": "Host svc\n  User from-b\n  Port 2020\n",
                "conf.d/10-a.conf": "Host svc\n  User from-a\n"}),
    Case("include-inside-host-block", "Host other\n  Include {d}/inc.conf\nHost *\n  User top\n", "inc-alias",
         files={"inc.conf": "Host inc-alias\n  User included\n"}),
    Case("include-relative-missing", "Include no-such-distctl-test.conf\nHost web\n  User alice\n", "web"),
    Case("include-nested", "Include {d}/one.conf\n", "deep",
         files={"one.conf": "Include {d}/two.conf\n", "two.conf": "Host deep\n  HostName 10.2.2.2\n"}),
    Case("match-host-after-hostname", "Host x\n  HostName %h.real.invalid\nMatch host x.real.invalid\n  User matched\n",
         "x"),
    Case("match-originalhost", "Host x\n  HostName 10.3.3.3\nMatch originalhost x\n  User orig\n", "x"),
    Case("match-user-from-inventory", "Match user deploy\n  Port 2222\n", "web", user="deploy"),
    Case("match-user-from-config", "Host web\n  User deploy\nMatch user deploy\n  Port 2222\n", "web"),
    Case("match-user-no-match", "Match user deploy\n  Port 2222\n", "web", user="alice"),
    Case("match-all", "Host web\n  User alice\nMatch all\n  Port 2244\n", "web"),
    Case("match-host-list-negated", "Match host *.invalid,!skip.invalid\n  User m\n", "skip.invalid"),
    Case("match-exec", 'Match exec "test %h = web.invalid"\n  User execd\n', "web.invalid"),
    Case("match-final", "Host web\n  HostName 10.4.4.4\nMatch final host 10.4.4.4\n  User final\n", "web"),
    Case("proxyjump-one", "Host target\n  HostName 10.0.1.5\n  ProxyJump bastion\n"
         "Host bastion\n  HostName 10.0.0.1\n  User jumper\n", "target"),
    Case("proxyjump-chain", "Host target\n  ProxyJump hop1,hop2\nHost hop1\n  HostName 10.0.0.1\n"
         "Host hop2\n  HostName 10.0.0.2\n  Port 2202\n", "target"),
    Case("proxyjump-user-port", "Host target\n  ProxyJump alice@bastion:2222\nHost bastion\n  User ignored\n"
         "  HostName 10.0.0.1\n", "target"),
    Case("proxyjump-uri", "Host target\n  ProxyJump ssh://bob@bastion:2022\n", "target"),
    Case("proxyjump-none-first", "Host direct\n  ProxyJump none\nHost *\n  ProxyJump bastion\n", "direct"),
    Case("bastion-pattern", "Host bastion\n  HostName 10.0.0.1\n  ProxyJump none\nHost *\n  ProxyJump bastion\n"
         "  User everyone\n", "node5"),
    Case("bastion-pattern-chain", "Host bastion\n  ProxyJump none\nHost inner\n  ProxyJump bastion\n"
         "Host *\n  ProxyJump bastion,inner\n", "node6"),
    Case("hop-with-own-proxyjump", "Host target\n  ProxyJump mid\nHost mid\n  ProxyJump edge\n"
         "Host edge\n  HostName 10.0.0.1\n", "target"),
    Case("hop-own-identity", "Host target\n  ProxyJump bastion\n  IdentityFile {d}/target_key\n"
         "Host bastion\n  IdentityFile {d}/bastion_key\n  IdentitiesOnly yes\n", "target", identity="inv_key"),
    Case("hop-ignores-inventory-user-port", "Host target\n  ProxyJump bastion\n", "target", user="deploy", port=2300),
    Case("proxycommand-tokens", "Host pc\n  HostName 10.0.0.8\n  Port 2208\n  User pcuser\n"
         "  ProxyCommand true %h %p %r %n %%\n", "pc"),
    Case("proxycommand-shell-syntax", "Host pc\n  ProxyCommand true %h && true '%p' | cat\n", "pc"),
    Case("proxycommand-before-proxyjump", "Host pc\n  ProxyCommand true %h\n  ProxyJump bastion\n", "pc"),
    Case("proxyjump-before-proxycommand", "Host pc\n  ProxyJump bastion\n  ProxyCommand true %h\n", "pc"),
    Case("proxycommand-none", "Host pc\n  ProxyCommand none\nHost *\n  ProxyCommand true %h\n", "pc"),
    Case("canonicalize-with-hostname", "CanonicalizeHostname yes\nCanonicalDomains invalid\n"
         "Host web\n  HostName 10.0.0.5\n  User canon\n", "web"),
    Case("canonicalize-fallback", "CanonicalizeHostname yes\nCanonicalDomains invalid\n", "nosuchname"),
    Case("canonicalize-behind-jump", "CanonicalizeHostname yes\nCanonicalDomains invalid\n"
         "Host target\n  HostName inner\n  ProxyJump bastion\n", "target"),
    Case("known-hosts-files", "Host web\n  HostName 10.0.0.5\n  UserKnownHostsFile {d}/kh1 {d}/kh_%h\n"
         "  GlobalKnownHostsFile {d}/global_kh\n", "web"),
    Case("known-hosts-none", "Host web\n  UserKnownHostsFile none\n", "web"),
    Case("host-key-alias", "Host web\n  HostName 10.0.0.5\n  Port 2200\n  HostKeyAlias webkey\n"
         "  UserKnownHostsFile {d}/kh_%k\n", "web"),
    Case("hash-known-hosts", "Host *\n  HashKnownHosts yes\n", "web"),
    Case("identity-agent-none", "Host web\n  IdentityAgent none\n", "web"),
    Case("forward-agent", "Host web\n  ForwardAgent yes\n  HostName 10.0.0.5\n", "web"),
    Case("strict-accept-new", "Host *\n  StrictHostKeyChecking accept-new\n", "web"),
    Case("strict-no", "Host *\n  StrictHostKeyChecking no\n", "web"),
    Case("connect-timeout", "Host web\n  ConnectTimeout 7\nHost *\n  ConnectTimeout 30\n", "web"),
    Case("ipv6-hostname", "Host v6\n  HostName ::1\n  Port 2222\n", "v6"),
]

FIELDS = ("hostname", "user", "port", "identityfile", "identitiesonly", "identityagent", "proxycommand",
          "userknownhostsfile", "globalknownhostsfile", "hostkeyalias", "connecttimeout", "stricthostkeychecking",
          "hashknownhosts")


def materialize(case: Case, root: Path) -> tuple[str, str | None]:
    """Write the case's config and files; returns (config path, -i path)."""
    for name, text in case.files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.replace("{d}", str(root)))
    for key in ("k1", "k2", "inv_key", "target_key", "bastion_key"):
        (root / key).write_text("")
    config = root / "ssh_config"
    config.write_text(case.config.replace("{d}", str(root)))
    return str(config), str(root / case.identity) if case.identity else None


# ---------------------------------------------------------------- the oracle: OpenSSH itself


def _flags(config: str, user, port, identity, jump=None) -> list[str]:
    argv = ["-F", config]
    for flag, value in (("-l", user), ("-p", port), ("-i", identity), ("-J", jump)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def openssh(config: str, alias: str, user=None, port=None, identity=None, jump=None, depth=0) -> dict:
    """Every compared field as OpenSSH computes it, hops included."""
    assert depth < 10, "ProxyJump loop in a test case"
    done = subprocess.run(["ssh", "-G", *_flags(config, user, port, identity, jump), "--", alias],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, check=True)
    g: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        g.setdefault(key, []).append(value)
    one = {k: g[k][0] for k in g}
    # What -G prints unexpanded, ssh -v shows expanded; a proxy that exits at once dials nothing.
    proxy = one.get("proxycommand", "none") != "none"
    verbose = subprocess.run(
        ["ssh", "-v", *_flags(config, user, port, identity), "-o", "BatchMode=yes",
         *([] if proxy else ["-o", "ProxyCommand=exit 1"]), "--", alias, "true"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    identities = [m for m in re.findall(r"debug1: identity file (.*) type -?\d+", verbose.stderr)
                  if not m.endswith("-cert")]
    command = re.search(r"Executing proxy command: exec (.*)", verbose.stderr)
    hops: list[dict] = []
    if one.get("proxyjump", "none") != "none" and not proxy:
        specs = one["proxyjump"].split(",")
        hop_user, hop_host, hop_port = _split_hop(specs[-1])
        last = openssh(config, hop_host, hop_user, hop_port, None, ",".join(specs[:-1]) or None, depth + 1)
        hops = [*last["proxyjump"], last]
    timeout = one.get("connecttimeout", "none")
    return {
        "alias": alias, "hostname": one["hostname"], "user": one["user"], "port": int(one["port"]),
        "identityfile": tuple(identities), "identitiesonly": one["identitiesonly"] == "yes",
        "identityagent": one.get("identityagent", "SSH_AUTH_SOCK") != "none",
        "proxycommand": command[1] if proxy else None,
        "userknownhostsfile": tuple(f for f in one["userknownhostsfile"].split() if f != "none"),
        "globalknownhostsfile": tuple(f for f in one["globalknownhostsfile"].split() if f != "none"),
        "hostkeyalias": one.get("hostkeyalias"), "connecttimeout": None if timeout == "none" else float(timeout),
        "stricthostkeychecking": {"true": "yes", "false": "no"}.get(one["stricthostkeychecking"],
                                                                    one["stricthostkeychecking"]),
        "hashknownhosts": one["hashknownhosts"] == "yes", "proxyjump": hops}


def _split_hop(spec: str):
    spec = spec.removeprefix("ssh://")
    user, _, rest = spec.rpartition("@")
    host, _, port = rest.rpartition(":") if re.search(r":\d+$", rest) else (rest, "", "")
    return user or None, host.strip("[]"), int(port) if port else None


def as_dict(s: SshSettings) -> dict:
    out = {f: getattr(s, f) for f in FIELDS}
    return {"alias": s.alias, **out, "proxyjump": [as_dict(h) for h in s.proxyjump]}


def differences(mine: dict, theirs: dict, where: str = "") -> list[str]:
    found = [f"{where}{f}: distctl {mine.get(f)!r} != ssh {theirs[f]!r}"
             for f in ("alias", *FIELDS) if mine.get(f) != theirs[f]]
    if len(mine.get("proxyjump", [])) != len(theirs["proxyjump"]):
        return [*found, (f"{where}proxyjump: distctl {[h['alias'] for h in mine.get('proxyjump', [])]} "
                         f"!= ssh {[h['alias'] for h in theirs['proxyjump']]}")]
    for i, (a, b) in enumerate(zip(mine["proxyjump"], theirs["proxyjump"])):
        found += differences(a, b, f"{where}hop {i} ({b['alias']}): ")
    return found


# ---------------------------------------------------------------- the differential test


def test_there_are_at_least_40_cases_with_distinct_ids():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


@needs_ssh
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_distctl_resolves_like_openssh(case, tmp_path):
    config, identity = materialize(case, tmp_path)
    theirs = openssh(config, case.alias, case.user, case.port, identity)
    mine = as_dict(sshconfig.resolve(case.alias, config, case.user, case.port, identity))
    assert differences(mine, theirs) == []


# Where paramiko's parser (used only without an ssh binary) cannot follow OpenSSH; it names
# Include and Match in its warning. The order of ProxyCommand and ProxyJump is lost by paramiko.
FALLBACK_DIFFERS = {"include-absolute", "include-glob-in-order", "include-nested", "match-host-after-hostname",
                    "match-user-from-inventory", "proxyjump-before-proxycommand"}


@needs_ssh
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_fallback_differs_from_openssh_only_where_known(case, tmp_path, monkeypatch):
    config, identity = materialize(case, tmp_path)
    theirs = openssh(config, case.alias, case.user, case.port, identity)
    monkeypatch.setattr(sshconfig, "SSH", "no-such-ssh-binary-for-distctl-tests")
    monkeypatch.setattr(sshconfig, "warn_once", lambda message: None)
    # paramiko's Match exec (invoke) reads stdin; left open for the test's length
    monkeypatch.setattr("sys.stdin", open(os.devnull))  # noqa: SIM115
    mine = as_dict(sshconfig.resolve(case.alias, config, case.user, case.port, identity))
    assert (differences(mine, theirs) != []) == (case.id in FALLBACK_DIFFERS)


# ---------------------------------------------------------------- errors ssh reports


@needs_ssh
def test_a_misspelt_keyword_is_a_one_line_bad_input_error_naming_file_and_line(tmp_path):
    inc = tmp_path / "inc.conf"
    inc.write_text("Host web\n  HostNme 10.0.0.1\n")
    config = tmp_path / "ssh_config"
    config.write_text(f"Host *\n  User a\nInclude {inc}\n")
    with pytest.raises(SshConfigError) as err:
        sshconfig.resolve("web", str(config))
    assert str(err.value) == f"{inc}:2: Bad configuration option: hostnme (ssh_config)"
    assert err.value.exit_code == ExitCode.BAD_INPUT


@needs_ssh
def test_a_proxyjump_loop_is_named_not_a_recursion_error(tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text("Host a\n  ProxyJump b\nHost b\n  ProxyJump a\n")
    with pytest.raises(SshConfigError) as err:
        sshconfig.resolve("a", str(config))
    assert str(err.value) == "ssh_config: ProxyJump loops: a -> b -> a (end the chain with 'ProxyJump none')"


@needs_ssh
def test_an_unknown_token_is_named(tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text("Host web\n  IdentityFile ~/.ssh/%Q\n")
    with pytest.raises(SshConfigError) as err:
        sshconfig.resolve("web", str(config))
    assert str(err.value) == "ssh_config: IdentityFile '~/.ssh/%Q': unknown token %Q"


@needs_ssh
def test_keywords_distctl_cannot_honour_are_named_once_and_forwarding_is_not_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sshconfig, "_warned", set())
    config = tmp_path / "ssh_config"
    config.write_text("Host *\n  ControlMaster auto\n  ControlPath ~/.ssh/cm-%C\n  BindAddress 127.0.0.1\n"
                      "  ForwardAgent yes\n  LocalForward 8080 localhost:80\n")
    hosts = [Host("a", "a.invalid"), Host("b", "b.invalid", user="deploy"), Host("c", "localhost", connection="local")]
    found = remote.resolve_hosts(hosts, Ssh(config=str(config)))
    remote.resolve_hosts(hosts, Ssh(config=str(config)))
    assert sorted(found) == ["a", "b"] and found["b"].user == "deploy"
    assert capsys.readouterr().err == ("distctl: warning: ssh_config sets BindAddress, ControlMaster, which distctl "
                                       "does not honour (it opens its own connections with paramiko)\n")


# ---------------------------------------------------------------- parsing captured output


CAPTURED = """\
host web
user alice
hostname 10.0.0.5
port 2200
identitiesonly yes
stricthostkeychecking true
hashknownhosts no
identityfile ~/.ssh/id_web
identityfile %d/second
globalknownhostsfile /etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2
userknownhostsfile /home/alice/.ssh/known_hosts none
hostkeyalias webkey
connecttimeout 7
controlmaster auto
forwardagent yes
proxycommand nc %h %p
"""


def test_captured_ssh_g_output_is_parsed_into_settings():
    g = sshconfig.parse_ssh_g(CAPTURED)
    assert g["identityfile"] == ["~/.ssh/id_web", "%d/second"]
    s = sshconfig.settings_from("web", g, ())
    home = os.path.expanduser("~")
    assert (s.hostname, s.user, s.port, s.identitiesonly) == ("10.0.0.5", "alice", 2200, True)
    assert s.identityfile == (f"{home}/.ssh/id_web", f"{home}/second")
    assert s.proxycommand == "nc 10.0.0.5 2200"
    assert s.userknownhostsfile == ("/home/alice/.ssh/known_hosts",)
    assert s.globalknownhostsfile == ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
    assert (s.hostkeyalias, s.connecttimeout, s.stricthostkeychecking) == ("webkey", 7.0, "yes")
    assert s.ignored == ("ControlMaster",)  # ForwardAgent is harmless: distctl never forwards
    assert s.describe() == "ProxyCommand 'nc 10.0.0.5 2200' -> alice@10.0.0.5:2200"


@pytest.mark.parametrize(("spec", "hops"), [
    ("bastion", [(None, "bastion", None)]),
    ("alice@b1:2222,b2", [("alice", "b1", 2222), (None, "b2", None)]),
    ("ssh://bob@[::1]:2022", [("bob", "::1", 2022)]),
    ("a@b@c", [("a@b", "c", None)]),
])
def test_proxyjump_hops_are_split_like_ssh(spec, hops):
    assert sshconfig.parse_jump(spec) == hops


def test_ssh_g_errors_become_file_colon_line():
    stderr = ("Pseudo-terminal will not be allocated because stdin is not a terminal.\n"
              "/tmp/x/cfg: line 4: Bad configuration option: hostnme\n"
              "/tmp/x/cfg: terminating, 1 bad configuration options\n")
    assert sshconfig.ssh_g_error(stderr, "web") == "/tmp/x/cfg:4: Bad configuration option: hostnme (ssh_config)"
    assert sshconfig.ssh_g_error("Can't open user config file /x: No such file or directory\n", "web") == \
        "ssh -G web: Can't open user config file /x: No such file or directory"


# ---------------------------------------------------------------- without an ssh binary


def test_without_ssh_the_fallback_resolves_and_says_once_what_it_ignores(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sshconfig, "SSH", "no-such-ssh-binary-for-distctl-tests")
    monkeypatch.setattr(sshconfig, "_warned", set())
    config = tmp_path / "ssh_config"
    config.write_text("Include /nonexistent/*.conf\n"
                      "Host node5\n  HostName 10.0.1.5 # behind the bastion\n  Port 2201 # ssh\n"
                      "Host bastion\n  HostName 10.0.0.1\n  ProxyJump none\n"
                      "Host *\n  ProxyJump bastion\n  User ops\n  ForwardAgent yes\n")
    s = sshconfig.resolve("node5", str(config), identity=str(config))
    assert (s.hostname, s.port, s.user) == ("10.0.1.5", 2201, "ops")
    assert s.identityfile[0] == str(config)
    assert [(h.alias, h.hostname, h.proxyjump) for h in s.proxyjump] == [("bastion", "10.0.0.1", ())]
    sshconfig.resolve("bastion", str(config))
    assert capsys.readouterr().err == (
        f"distctl: warning: no 'no-such-ssh-binary-for-distctl-tests' client found: {config} is read by "
        "paramiko, which does not honour include; install OpenSSH's client for exact results\n")


# ---------------------------------------------------------------- known_hosts as ssh reads it


@pytest.mark.parametrize(("name", "hosts", "expected"), [
    ("10.0.0.1", "10.0.0.1", True),
    ("[10.0.0.1]:2222", "[10.0.0.1]:2222", True),  # brackets are literal, not a character class
    ("1", "[10.0.0.1]:2222", False),
    ("[10.0.0.1]:2222", "10.0.0.1", False),  # off port 22 only the bracketed form counts
    ("web.corp", "db.corp,WEB.corp", True),
    ("web.corp", "*.corp", True),
    ("web.corp", "*.corp,!web.corp", False),
    ("web.corp", "!db.corp", False),
    ("web1.corp", "web?.corp", True),
    ("web10.corp", "web?.corp", False),
    ("webkey", "|1|" + "A" * 28 + "|" + "B" * 28, False),
])
def test_known_hosts_names_match_like_openssh(name, hosts, expected):
    assert knownhosts.matches(name, hosts) is expected


@needs_ssh
def test_recorded_keys_are_found_by_ssh_keygen_hashed_or_not(tmp_path):
    path = tmp_path / "sub" / "known_hosts"
    path.parent.mkdir()
    path.write_text("# a comment, unterminated")
    knownhosts.record(str(path), "[10.0.0.1]:2222", "ssh-ed25519", KEY, hashed=False)
    knownhosts.record(str(path), "webkey", "ssh-ed25519", KEY, hashed=True)
    lines = path.read_text().splitlines()
    assert lines[:2] == ["# a comment, unterminated", f"[10.0.0.1]:2222 ssh-ed25519 {KEY}"]
    assert lines[2].startswith("|1|") and knownhosts.matches("webkey", lines[2].split()[0])
    for name in ("[10.0.0.1]:2222", "webkey"):
        found = subprocess.run(["ssh-keygen", "-F", name, "-f", str(path)], capture_output=True, text=True, check=False)
        assert found.returncode == 0 and KEY in found.stdout, (name, found.stdout)


def test_known_hosts_lines_are_read_with_any_whitespace_and_markers(tmp_path):
    path = tmp_path / "known_hosts"
    path.write_text(f"\n# comment\n10.0.0.1\t ssh-ed25519   {KEY} trailing comment\n@revoked * ssh-ed25519 {KEY}\n"
                    "@cert-authority *.corp ssh-ed25519 AAAA\ngarbage\n")
    assert knownhosts.read_entries([str(path), str(tmp_path / "missing")]) == [
        knownhosts.Entry(None, "10.0.0.1", "ssh-ed25519", KEY),
        knownhosts.Entry("@revoked", "*", "ssh-ed25519", KEY),
        knownhosts.Entry("@cert-authority", "*.corp", "ssh-ed25519", "AAAA")]


def test_host_key_alias_is_the_lookup_name_whatever_the_port():
    assert knownhosts.lookup_name("10.0.0.1", 22) == "10.0.0.1"
    assert knownhosts.lookup_name("10.0.0.1", 2222) == "[10.0.0.1]:2222"
    assert knownhosts.lookup_name("10.0.0.1", 2222, "webkey") == "webkey"
    assert knownhosts.keyscan_hint("10.0.0.1", 2222, "webkey", "/k") == \
        "ssh-keyscan -p 2222 10.0.0.1 | sed 's/^[^ ]*/webkey/' >> /k"


KEY = "AAAAC3NzaC1lZDI1NTE5AAAAIEpcX5WG0tK28cs/EM2VWS+FjdDl3p7yXXCSptEUP3Hx"
