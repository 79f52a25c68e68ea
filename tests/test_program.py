"""Your own program under distctl (job.code, job.command, job.setup) on the real SSH cluster."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from e2e import distctl, run_pids, write_inventory

pytestmark = pytest.mark.cluster

# A script written for torchrun: nothing in it knows distctl.
TORCHRUN_SCRIPT = '''
import json, os
import torch, torch.distributed as dist
base = set(json.loads(os.environ.get("BASE_KEYS", "[]"))) | {"BASE_KEYS", "_"}
dist.init_process_group("gloo")
total = torch.tensor([float(dist.get_rank())])
dist.all_reduce(total)
env = {k: v for k, v in sorted(os.environ.items()) if k not in base}
print("SUM %g FILES %s" % (total.item(), json.dumps(sorted(os.listdir(".")))), flush=True)
print("ENV " + json.dumps(env), flush=True)
with open("env-rank%d.json" % dist.get_rank(), "w") as f:  # torchrun interleaves its ranks' stdout
    json.dump(env, f)
os.makedirs("out", exist_ok=True)
with open("out/rank%d.txt" % dist.get_rank(), "w") as f:
    f.write("sum %g\\n" % total.item())
if os.environ["LOCAL_RANK"] == "0":
    with open("metrics.json", "w") as f:
        json.dump({"host_group": os.environ["GROUP_RANK"]}, f)
dist.destroy_process_group()
'''

# Only these differ from torchrun's environment, on purpose (README: "Your own training script").
TORCHRUN_ONLY = {
    "TORCHELASTIC_USE_AGENT_STORE",  # no agent hosts the store: rank 0 must
    "TORCHELASTIC_ERROR_FILE",  # written by torchrun's agent, which does not run here
    "TORCHELASTIC_SIGNALS_TO_HANDLE",  # ditto
}
DISTCTL_ONLY = {"DISTCTL_RUN_ID", "DISTCTL_CODE", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "PYTHONUNBUFFERED"}


def rank_envs(output: str) -> dict[int, dict[str, str]]:
    envs = [json.loads(m) for m in re.findall(r"\] ENV (\{.*\})$", output, re.M)]
    return {int(e["RANK"]): e for e in envs}


@pytest.fixture(scope="module")
def torchrun_env(tmp_path_factory, real_trainer) -> dict[str, str]:
    """What a real `torchrun --nproc-per-node 2` gives rank 1 of the same script, on one host."""
    folder = tmp_path_factory.mktemp("torchrun")
    (folder / "train.py").write_text(TORCHRUN_SCRIPT)
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "train.py"], cwd=folder,
                          capture_output=True, text=True, timeout=180,
                          env={**os.environ, "BASE_KEYS": json.dumps(sorted(os.environ))})
    assert done.returncode == 0, done.stderr
    return json.loads((folder / "env-rank1.json").read_text())


def test_a_torchrun_script_runs_unchanged_with_torchruns_environment(cluster, tmp_path, torchrun_env):
    code = tmp_path / "project"
    code.mkdir()
    (code / "train.py").write_text(TORCHRUN_SCRIPT)
    (code / "helper.txt").write_text("pushed with the code\n")
    (code / ".gitignore").write_text("*.bin\n")
    (code / "big.bin").write_bytes(os.urandom(1 << 20) * 5)  # ignored: never pushed
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"], slots=2, code="project",
                          command="python train.py", outputs=["out/*.txt", "metrics.json"])
    done = distctl("up", str(inv), cwd=tmp_path, env={"BASE_KEYS": json.dumps(sorted(os.environ))})
    assert done.returncode == 0, done.stderr
    assert "distctl: pushing code: 3 files," in done.stderr  # train.py, helper.txt, .gitignore
    assert done.stdout.count("SUM 6 FILES") == 4  # all_reduce over env:// of ranks 0+1+2+3
    assert '[".gitignore", "helper.txt", "train.py"]' in done.stdout  # cwd: the code folder, no big.bin
    for name in ("node1", "node2"):
        h = cluster.host(name)
        assert h.run(f"find {h.workdir} -name big.bin | wc -l", check=True).stdout.strip() == "0"

    # job.outputs come back: names only one host has at the top, shared names per host
    pulled = distctl("pull", cwd=tmp_path)
    assert pulled.returncode == 0, pulled.stderr
    run_dir = next((tmp_path / "runs").iterdir())
    assert sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()
                  and not p.name.endswith(".log")) == [
        "node1/metrics.json", "node2/metrics.json", "out/rank0.txt", "out/rank1.txt", "out/rank2.txt",
        "out/rank3.txt"]
    assert (run_dir / "out" / "rank3.txt").read_text() == "sum 6\n"
    assert json.loads((run_dir / "node2" / "metrics.json").read_text()) == {"host_group": "1"}
    again = distctl("pull", cwd=tmp_path)
    assert again.returncode == 0 and "outputs: wrote 0 files (0 B)" in again.stderr, again.stderr
    envs = rank_envs(done.stdout)
    assert sorted(envs) == [0, 1, 2, 3]
    # Every variable torchrun adds is there, apart from the listed intended differences (the
    # rest of a rank's environment is the host's login environment, which torchrun passes on too).
    assert set(torchrun_env) - TORCHRUN_ONLY - set(envs[1]) == set()
    assert TORCHRUN_ONLY & set(envs[1]) == set()
    assert DISTCTL_ONLY - set(envs[1]) == set()
    node1 = cluster.host("node1")
    for rank, env in envs.items():
        group = rank // 2
        assert env["MASTER_ADDR"] == node1.address  # an IP, never a hostname
        assert {k: env[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                                    "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME",
                                    "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS",
                                    "OMP_NUM_THREADS")} == {
            "RANK": str(rank), "LOCAL_RANK": str(rank % 2), "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2",
            "GROUP_RANK": str(group), "GROUP_WORLD_SIZE": "2", "ROLE_RANK": str(rank), "ROLE_WORLD_SIZE": "4",
            "ROLE_NAME": "default", "TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_MAX_RESTARTS": "0",
            "OMP_NUM_THREADS": "1"}
        assert env["TORCHELASTIC_RUN_ID"] == env["DISTCTL_RUN_ID"]
    # torchrun's values where they mean the same on one host of two ranks
    one_host_keys = ("LOCAL_RANK", "LOCAL_WORLD_SIZE", "ROLE_NAME", "TORCHELASTIC_RESTART_COUNT",
                     "TORCHELASTIC_MAX_RESTARTS", "OMP_NUM_THREADS", "TORCH_NCCL_ASYNC_ERROR_HANDLING")
    assert {k: envs[1][k] for k in one_host_keys} == {k: torchrun_env[k] for k in one_host_keys}


PROGRAM = "import os, socket; print('hello from rank', os.environ['RANK'], 'on', socket.gethostname())\n"


def setup_runs(cluster, host: str) -> int:
    """How often job.setup ran on a host: it appends to a file in the host's private workdir."""
    h = cluster.host(host)
    out = h.run(f"cat {h.workdir}/setup-count 2>/dev/null | wc -l", check=True).stdout
    return int(out.strip() or 0)


def setup_inventory(cluster, tmp_path, setup: str):
    """Two hosts running PROGRAM (torch-free, no rendezvous) after `setup`."""
    return write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"], code=_project(tmp_path, PROGRAM),
                           command="python prog.py", setup=setup, wait_for_rank0=False)


def test_setup_runs_once_per_host_is_skipped_when_unchanged_and_reruns_after_a_change(cluster, tmp_path):
    # the count file sits in the host's workdir (<workdir>/setup/<key>/../../)
    inv = setup_inventory(cluster, tmp_path, "echo ran >> ../../setup-count\necho setting up on $(hostname)\n")
    code = tmp_path / "project"
    first = distctl("up", str(inv), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "[node2 setup] setting up on node2" in first.stdout
    assert "[node2 r1] hello from rank 1 on node2" in first.stdout
    assert (setup_runs(cluster, "node1"), setup_runs(cluster, "node2")) == (1, 1)

    again = distctl("up", str(inv), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "[node1 setup] setup unchanged since it last succeeded here; skipped" in again.stdout
    assert (setup_runs(cluster, "node1"), setup_runs(cluster, "node2")) == (1, 1)

    (code / "prog.py").write_text(PROGRAM + "print('changed')\n")
    changed = distctl("up", str(inv), cwd=tmp_path)
    assert changed.returncode == 0, changed.stderr
    assert "[node1 r0] changed" in changed.stdout
    assert (setup_runs(cluster, "node1"), setup_runs(cluster, "node2")) == (2, 2)


def test_a_setup_failing_on_one_host_launches_nothing_anywhere(cluster, tmp_path):
    inv = setup_inventory(cluster, tmp_path, 'echo "preparing $(hostname)"\n'
                          'if [ "$(hostname)" = node2 ]; then echo "no wheel for you" >&2; exit 3; fi\n')
    pid_files = "ls {}/runs/*/rank*.pid 2>/dev/null | wc -l"
    before = {n: cluster.host(n).run(pid_files.format(cluster.host(n).workdir), check=True).stdout
              for n in ("node1", "node2")}
    done = distctl("up", str(inv), cwd=tmp_path)
    assert done.returncode == 10, done.stderr
    assert "setup failed on 1 host(s):" in done.stderr
    assert "node2: job.setup exited with code 3; nothing was launched anywhere. Last lines:" in done.stderr
    assert "    no wheel for you" in done.stderr
    assert "hello from rank" not in done.stdout
    for name in ("node1", "node2"):  # no rank was started on any host
        h = cluster.host(name)
        assert h.run(pid_files.format(h.workdir), check=True).stdout == before[name]


def test_a_user_programs_exit_code_is_reported_as_it_is(cluster, tmp_path):
    code = tmp_path / "project"
    code.mkdir()
    (code / "prog.py").write_text("import os, sys\nprint('bye', flush=True)\n"
                                  "sys.exit(4 if os.environ['RANK'] == '1' else 0)\n")
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"], code="project",
                          command=["python", "prog.py"], wait_for_rank0=False)
    done = distctl("up", str(inv), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    # 4 is the bundled trainer's "peer lost"; from a user program it is just a failure, and first
    assert "rank 1 on node2 failed first: exited with code 4" in done.stderr


def _project(tmp_path, source: str) -> str:
    code = tmp_path / "project"
    code.mkdir(exist_ok=True)
    (code / "prog.py").write_text(source)
    return "project"


# Joins through env:// and then works for longer than job.join_timeout: a healthy run.
SLOW_BUT_JOINED = '''
import os, time
import torch.distributed as dist
dist.init_process_group("gloo")
time.sleep(float(os.environ["WORK_S"]))
dist.barrier()
print("finished rank", dist.get_rank(), flush=True)
dist.destroy_process_group()
'''

# Rank 1 never joins: rank 0 waits at the store for it.
NEVER_JOINS = '''
import os, time
if os.environ["RANK"] == "1":
    time.sleep(600)
import torch.distributed as dist
dist.init_process_group("gloo")
'''


def test_the_join_watchdog_never_ends_a_user_program_that_joined(cluster, real_trainer, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"],
                          code=_project(tmp_path, SLOW_BUT_JOINED), command="python prog.py",
                          join_timeout=8, env={"WORK_S": "14"})
    done = distctl("up", str(inv), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "[node2 r1] finished rank 1" in done.stdout


def test_the_join_watchdog_names_the_host_whose_rank_never_reached_the_store(cluster, real_trainer, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"],
                          code=_project(tmp_path, NEVER_JOINS), command="python prog.py", join_timeout=10)
    done = distctl("up", str(inv), cwd=tmp_path)
    assert done.returncode == 6, done.stderr
    node1 = cluster.host("node1")
    assert (f"ranks never joined within job.join_timeout=10s: node2 (0 of 1 rank(s) connected to "
            f"{node1.address}:") in done.stderr
    run_id = re.search(r"run (\S+) started", done.stderr)[1]
    assert not any(run_pids(cluster, run_id).values())  # torn down everywhere


def test_rank_0_exiting_before_it_listens_is_named(cluster, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"],
                          code=_project(tmp_path, "import sys\nprint('no rendezvous here')\nsys.exit(0)\n"),
                          command="python prog.py")
    done = distctl("up", str(inv), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    node1 = cluster.host("node1")
    assert (f"node1: rank 0 did not open {node1.address}:") in done.stderr
    assert (": it exited first with code 0 (a program that brings its own rendezvous, or opens the port late: "
            "set job.wait_for_rank0: false); the run was stopped on every host.") in done.stderr
    assert "    no rendezvous here" in done.stderr


def test_rank_0_failing_before_it_listens_is_a_rank_failure_not_a_rendezvous_hint(cluster, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"],
                          code=_project(tmp_path, "import wandb\n"), command="python prog.py")
    done = distctl("up", str(inv), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    node1 = cluster.host("node1")
    assert (f"distctl: error: rank 0 on node1 failed first: exited with code 1 before it opened {node1.address}:"
            in done.stderr), done.stderr
    assert "wait_for_rank0" not in done.stderr
    assert "ModuleNotFoundError: No module named 'wandb'" in done.stderr.splitlines()[-1]


def test_detach_status_stop_and_secrets_work_for_a_user_program(cluster, tmp_path, monkeypatch):
    source = ("import os, time\nprint('token', os.environ['TOKEN'], 'data', "
              "sorted(os.listdir(os.environ['DISTCTL_DATA'])), flush=True)\ntime.sleep(300)\n")
    data = tmp_path / "ds"
    data.mkdir()
    (data / "shard0.bin").write_bytes(b"x" * 100)
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"], code=_project(tmp_path, source),
                          command="python prog.py", wait_for_rank0=False, data=str(data),
                          env={"TOKEN": {"from_env": "SECRET_TOKEN"}})
    env = {"SECRET_TOKEN": "hunter2-value"}
    started = distctl("up", str(inv), "--detach", cwd=tmp_path, env=env)
    assert started.returncode == 0, started.stderr
    run_id = re.search(r"run (\S+) started", started.stderr)[1]
    status = distctl("status", cwd=tmp_path)
    assert status.returncode == 0 and status.stdout.count(" running") == 2, status.stdout
    logs = distctl("logs", cwd=tmp_path, env=env)
    assert "[node2 r1] token *** data ['shard0.bin']" in logs.stdout, logs.stdout and "hunter2" not in logs.stdout
    stopped = distctl("stop", "--grace", "1", cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    assert not any(run_pids(cluster, run_id).values())
