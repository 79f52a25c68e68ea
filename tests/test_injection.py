"""Shell injection: hostile paths, names and environment values reach the rank verbatim, and
values a shell cannot carry are refused at load time. The properties run the planner's scripts
in a local sandbox with a recorder standing in for python, and over SSH on the test cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml
from e2e import wait_for
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from orchestrator import shell
from orchestrator.ssh import remote
from orchestrator.errors import InventoryError
from orchestrator.inventory.model import Host, Ssh, parse_inventory
from orchestrator.contract import RUN_MARKER
from orchestrator.plan.model import Artifact, StepKind, plan_launch

cluster_test = pytest.mark.cluster  # the pure properties below run without a cluster


# ---------------------------------------------------------------- shell injection

# Stands in for python: records its argv and the environment variables named in RECORD_ENV;
# `-c` (distctl's host-side programs, e.g. the one that detaches ranks) goes to a real python.
RECORDER = """#!/usr/bin/python3 -S
import json, os, sys
if sys.argv[1:2] in (["-c"], ["-I"]):  # a host-side program, or a rank's progress tracker
    os.execv(sys.executable, [sys.executable] + sys.argv[1:])
out = os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), "record.json")
names = os.environ.get("RECORD_ENV", "").split(",")
data = {"argv": sys.argv, "env": {n: os.environ.get(n) for n in names + ["%s"] if n}}
with open(out + ".tmp", "w") as f:
    json.dump(data, f)
os.rename(out + ".tmp", out)
""" % RUN_MARKER  # noqa: UP031 - the script's own braces would need doubling in an f-string

CANARY = f"/tmp/distctl-canary-{os.getpid()}"  # what any injected `touch` below would create
REL_CANARY = "DISTCTL_CANARY"  # the same, relative to whatever directory the shell is in
HOSTILE = ["'", '"', "\\", "$", "$(", ")", "`", ";", "|", "&", ">", "<", " ", "\t", "*", "?", "~", "#",
           "!", "{", "}", "[", "]", "=", "-", "--x", "$HOME", "${IFS}", "$((1+1))", "%s", "'\\''",
           "é", "日本", "🙂", "\u00a0", "\u2028", "\x01", "\x7f",
           f"$(touch {REL_CANARY})", f"`touch {REL_CANARY}`", f"; touch {REL_CANARY}", f"| touch {REL_CANARY} &"]


def _hostile(extra: list[str], exclude: str = "") -> st.SearchStrategy[str]:
    """Text built from shell metacharacters, injection fragments and arbitrary characters."""
    frag = st.sampled_from([f for f in HOSTILE + extra if not set(f) & set(exclude)])
    text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0" + exclude), max_size=6)
    return st.lists(frag | text, max_size=8).map("".join)


# A path component: single line, no "/" (a directory name); "." and ".." are not names.
component = _hostile([], exclude="/\r\n").filter(lambda s: s.strip() and s not in (".", ".."))
env_value = _hostile(["\n", "\r\n", f"\ntouch {CANARY}\n", f"$(touch {CANARY})", f"; touch {CANARY}"])
env_vars = st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True).map("T_".__add__),
                           env_value, min_size=1, max_size=3)
job_name = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
INJECTIONS = [(f"$(touch {REL_CANARY})", {"T_A": f"$(touch {CANARY})"}),
              (f"; touch {REL_CANARY}", {"T_A": f"; touch {CANARY}", "T_B": f"'; touch {CANARY}; '"}),
              (f"`touch {REL_CANARY}`", {"T_A": f"`touch {CANARY}`", "T_B": f"\"; touch {CANARY}; \""}),
              (f"' && touch {REL_CANARY} '", {"T_A": f"\ntouch {CANARY}\n", "T_B": f"x\\'; touch {CANARY} #"}),
              (f"a b\"c\\ $HOME * ~ | touch {REL_CANARY} &", {"T_A": "", "T_B": "\\"})]
FAKE_CODE = (Artifact("code", "0" * 64, "/nonexistent"),)


def _injection_examples(test):
    for path, env in INJECTIONS:
        test = example(path=path, pydir=path, env=env, job="j")(test)
    return test


def launch_plan(base: str, path: str, pydir: str, env: dict[str, str], job: str, **host):
    """Inventory text → parse_inventory → plan_launch, as `distctl up` does; and the recorder."""
    folder = Path(base, "py", pydir)
    folder.mkdir(parents=True, exist_ok=True)
    recorder = folder / "python"
    recorder.write_text(RECORDER)
    recorder.chmod(0o755)
    all_env = {**env, "RECORD_ENV": ",".join(env)}
    text = yaml.safe_dump({"hosts": [{"name": "h1", "address": "h1", "slots": 1, "python": str(recorder),
                                      "workdir": f"{base}/work/{path}", "env": all_env, **host}],
                           "job": {"name": job}})
    inv = parse_inventory(text)
    assert {v.name: v.value for v in inv.hosts[0].env} == all_env  # the YAML round trip kept them
    run_id = f"{job}-20250101-000000-abcd"
    return plan_launch(inv, run_id, FAKE_CODE), folder / "record.json"


def steps_of(plan, kind: StepKind) -> str:
    return next(s.command for s in plan.steps if s.kind is kind)


def assert_recorded(record: Path, plan, env: dict[str, str]) -> None:
    data = json.loads(wait_for(lambda: record.exists() and record.read_text(), 30, "the recorder's output",
                               every=0.01))
    assert data["argv"] == list(plan.hosts[0].ranks[0].argv)
    assert data["env"] == {**env, RUN_MARKER: plan.run_id}


@settings(max_examples=60, deadline=None)
@given(path=component, pydir=component, env=env_vars, job=job_name)
@_injection_examples
def test_launch_scripts_pass_hostile_values_verbatim_in_a_local_sandbox(path, pydir, env, job):
    base = tempfile.mkdtemp(prefix="distctl-inj-")
    try:
        plan, record = launch_plan(base, path, pydir, env, job)
        hp = plan.hosts[0]
        sandbox = {"HOME": base, "PATH": os.environ["PATH"]}
        for kind, stdin in ((StepKind.PREPARE, shell.env_file(hp.env)), (StepKind.LAUNCH, "")):
            command = steps_of(plan, kind)
            Path(hp.code_dir).mkdir(parents=True, exist_ok=True)  # what the push step would have made
            parsed = subprocess.run(["sh", "-n", "-c", command], capture_output=True, text=True)
            assert parsed.returncode == 0, parsed.stderr
            done = subprocess.run(["sh", "-c", command], input=stdin.encode(), capture_output=True, cwd=base,
                                  env=sandbox, timeout=30)
            assert done.returncode == 0, done.stderr
        assert_recorded(record, plan, env)
        exit_file = Path(hp.rundir, "rank0.exit")  # the detached wrapper is done: nothing writes any more
        assert wait_for(lambda: exit_file.exists() and exit_file.read_text(), 30, "the rank's exit code",
                        every=0.01) == "0\n"
        # Its watcher read its config and started (it writes agent.log once the rank's end is seen).
        wait_for(lambda: Path(hp.rundir, "agent.state").exists(), 30, "the agent's state", every=0.01)
        assert sorted(p.name for p in Path(hp.rundir).iterdir() if p.name != "agent.log") == [
            "agent.pid", "agent.state", "agent.watch", "ckpt", "env", "format",
            "rank0.exit", "rank0.from", "rank0.log", "rank0.pid", "stacks", "uses", "work"]
        assert not os.path.exists(CANARY)
        assert not [p for p in Path(base).rglob(REL_CANARY)]
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def node1_conn(cluster):
    """One SSH connection to node1 through distctl's own remote module, kept for every example."""
    h = cluster.host("node1")
    conn = remote.connect(Host("node1", h.address, user=cluster.user, port=h.port,
                               identity_file=str(cluster.key_path)), Ssh(known_hosts=(str(cluster.known_hosts),)))
    yield conn
    conn.close()


@cluster_test
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=component, pydir=component, env=env_vars, job=job_name)
@_injection_examples
def test_hostile_values_reach_a_real_remote_rank_verbatim_over_ssh(cluster, node1_conn, path, pydir, env, job):
    node1 = cluster.host("node1")
    shared = tempfile.mkdtemp(prefix="distctl-inj-")  # /tmp is shared with the hosts; the workdir is not
    try:
        base = f"{node1.workdir}/inj-{uuid.uuid4().hex[:8]}"
        plan, record = launch_plan(shared, path, pydir, env, job, workdir=f"{base}/{path}")
        hp = plan.hosts[0]
        prepared = node1_conn.run(steps_of(plan, StepKind.PREPARE), stdin=shell.env_file(hp.env).encode(),
                                  timeout=30)
        assert prepared.exit_code == 0, prepared.stderr
        assert node1_conn.run(f"mkdir -p {shell.join([hp.code_dir])}").exit_code == 0  # as the push would
        launched = node1_conn.run(steps_of(plan, StepKind.LAUNCH), timeout=30)
        assert launched.exit_code == 0, launched.stderr
        assert_recorded(record, plan, env)
        assert not os.path.exists(CANARY)
        # inside the host: only our files in the run dir, no canary where a shell could have run
        look = ('i=0; while [ ! -e "$1/rank0.exit" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; '
                'cat "$1/rank0.exit"; ls -A "$1"; '
                'for d in "$HOME" "$2" "$3" "$1"; do [ -e "$d/$4" ] && echo "CANARY in $d"; done; true')
        seen = node1.run(["sh", "-c", look, "-", hp.rundir, base, hp.workdir, REL_CANARY], check=True).stdout
        names = seen.split()  # (the agent's files come and go as it watches: agent.log, agent.state)
        assert [n for n in names if not n.startswith("agent.")] == [
            "0", "ckpt", "env", "format", "rank0.exit", "rank0.from", "rank0.log", "rank0.pid", "stacks", "uses",
            "work"], seen
        assert {"agent.pid", "agent.watch"} <= set(names), seen
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.parametrize("env, message", [
    ("{A-B: x}", "env name 'A-B' is not a valid variable name"),
    ('{A: "x\\0y"}', "must not contain a NUL byte"),
])
def test_values_the_shell_cannot_carry_are_rejected_at_load_time(env, message):
    text = f"hosts:\n  - name: h1\n    address: h1\n    env: {env}\n"
    with pytest.raises(InventoryError) as err:
        parse_inventory(text, "inv.yaml")
    assert str(err.value).startswith("inv.yaml:4: hosts[0] (h1): ") and message in str(err.value)
