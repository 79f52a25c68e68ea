"""OpenSSH fidelity and the workstation side: ssh_config aliases, ProxyJump, pull."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from e2e import digests, distctl, free_port, last_run_id

pytestmark = pytest.mark.cluster


def alias_inventory(path, cluster, names, **job):
    """Hosts named only by ssh_config alias: user, port, key and jump host come from ssh_config."""
    inventory = {
        "defaults": {"python": cluster.python},
        "hosts": [{"name": n, "address": n, "workdir": cluster.host(n).workdir} for n in names],
        "job": {"name": "t", "port": free_port(), "join_timeout": 120,
                "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "timeout": 60}, **job},
        "ssh": {"config": str(cluster.ssh_config), "known_hosts": []},
    }
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


def test_a_host_behind_a_jump_host_trains_through_proxyjump(isolated_jump, standin_mnist, tmp_path):
    # node5 is on the back network only; the workstation reaches it via bastion (ProxyJump)
    inv = alias_inventory(tmp_path / "inv.yaml", isolated_jump, ["bastion", "node5"], data=str(standin_mnist))
    check = distctl("check", str(inv), "--json", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    plan = json.loads(check.stdout)
    back = dict(isolated_jump.host("bastion").interfaces)["eth1"]
    assert plan["init_method"].startswith(f"tcp://{back}:")  # the address node5 can reach
    assert [(h["name"], h["hostname"]) for h in plan["hosts"]] == [("bastion", "bastion"), ("node5", "node5")]
    up = distctl("up", str(inv), cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    found = digests(up.stdout)
    assert sorted(found) == [0, 1] and len(set(found.values())) == 1


def test_pull_brings_back_a_loadable_model_logs_metrics_and_a_plot(cluster, small_mnist, torch, tmp_path):
    from e2e import write_inventory

    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"], data=str(small_mnist), epochs=2)
    assert distctl("up", str(inv), cwd=tmp_path).returncode == 0
    pulled = distctl("pull", cwd=tmp_path)
    assert pulled.returncode == 0, pulled.stderr
    out = tmp_path / "runs" / last_run_id(tmp_path)
    assert sorted(p.name for p in out.iterdir()) == [
        "metrics.jsonl", "metrics.png", "model.pt", "rank0.log", "rank1.log"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["rank"]) for r in rows] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = torch.load(out / "model.pt", weights_only=True)
    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10),
                                torch.nn.LogSoftmax(dim=1))
    model.load_state_dict(state["model"])
    assert state["epoch"] == 2
    run_id = last_run_id(tmp_path)
    assert pulled.stderr.splitlines()[-2:] == [
        f"distctl: pulled run {run_id} into runs/{run_id}/: model.pt, 2 rank logs, metrics.jsonl, metrics.png",
        "distctl: model.pt: epoch 2 (end of epoch)"]


def test_pull_to_a_folder_lists_only_what_it_wrote(cluster, small_mnist, tmp_path):
    """--to DIR gets DIR/runs/<run id>/; without matplotlib there is no plot, and no claim of one."""
    from e2e import write_inventory

    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1"], data=str(small_mnist))
    assert distctl("up", str(inv), cwd=tmp_path).returncode == 0
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "matplotlib.py").write_text("raise ImportError('no matplotlib here')\n")
    repo = Path(__file__).resolve().parent.parent
    pulled = distctl("pull", "--to", "out", cwd=tmp_path, env={"PYTHONPATH": f"{blocker}:{repo}"})
    assert pulled.returncode == 0, pulled.stderr
    run_id = last_run_id(tmp_path)
    out = tmp_path / "out" / "runs" / run_id
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl", "model.pt", "rank0.log"]
    assert not (tmp_path / "runs").exists()
    assert pulled.stderr.splitlines()[-3:] == [
        "distctl: matplotlib is not installed: no metrics.png (pip install matplotlib)",
        f"distctl: pulled run {run_id} into out/runs/{run_id}/: model.pt, 1 rank log, metrics.jsonl",
        "distctl: model.pt: epoch 1 (end of epoch)"]


def test_ssh_agent_keys_are_used_when_present(cluster, tmp_path):
    import os
    import subprocess

    from e2e import write_inventory

    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1"])
    data = yaml.safe_load(inv.read_text())
    del data["defaults"]["identity_file"]  # no key named anywhere: only the agent has it
    data["ssh"]["config"] = str(tmp_path / "empty_ssh_config")
    (tmp_path / "empty_ssh_config").write_text("")
    inv.write_text(yaml.safe_dump(data))
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        from e2e import wait_for

        wait_for(sock.exists, 10, "ssh-agent to listen")
        env = {"SSH_AUTH_SOCK": str(sock), "HOME": str(tmp_path)}  # no ~/.ssh keys either
        without = distctl("check", str(inv), cwd=tmp_path, env=env)
        assert without.returncode == 3 and "authentication failed" in without.stderr, without.stderr
        subprocess.run(["ssh-add", str(cluster.key_path)], env={**os.environ, **env}, check=True,
                       capture_output=True)
        with_agent = distctl("check", str(inv), cwd=tmp_path, env=env)
        assert with_agent.returncode == 0, with_agent.stderr
    finally:
        agent.terminate()
        agent.wait()


def test_two_proxyjump_hops(isolated_jump, tmp_path):
    """workstation → bastion → node5 → bastion's back-net address: a two-hop ProxyJump chain,
    every hop's host key checked."""
    cluster = isolated_jump
    bastion = cluster.host("bastion")
    back = dict(bastion.interfaces)["eth1"]
    key = " ".join((cluster.tmpdir / "bastion" / "ssh_host_ed25519_key.pub").read_text().split()[:2])
    known = tmp_path / "known_hosts"
    known.write_text(cluster.known_hosts.read_text() + f"{back} {key}\n")
    config = tmp_path / "ssh_config"
    config.write_text(f"Host bastion-back\n    HostName {back}\n    ProxyJump bastion,node5\n"
                      + cluster.ssh_config.read_text().replace(str(cluster.known_hosts), str(known)))
    inv = alias_inventory(tmp_path / "inv.yaml", cluster, ["bastion"])
    data = yaml.safe_load(inv.read_text())
    data["hosts"][0].update(name="far", address="bastion-back")
    data["ssh"]["config"] = str(config)
    inv.write_text(yaml.safe_dump(data))
    done = distctl("check", str(inv), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [(h["name"], h["hostname"]) for h in json.loads(done.stdout)["hosts"]] == [("far", "bastion")]
    # the direct route to the back network is unreachable from here: only the chain got through
    import socket

    with pytest.raises(OSError):
        socket.create_connection((back, 22), timeout=2)


def test_proxyjump_none_means_a_direct_connection(cluster, tmp_path):
    node1 = cluster.host("node1")
    config = tmp_path / "ssh_config"
    config.write_text(f"Host direct1\n    HostName {node1.address}\n    Port {node1.port}\n    ProxyJump none\n"
                      + cluster.ssh_config.read_text())
    inv = alias_inventory(tmp_path / "inv.yaml", cluster, ["node1"])
    data = yaml.safe_load(inv.read_text())
    data["hosts"][0]["address"] = "direct1"
    data["ssh"]["config"] = str(config)
    inv.write_text(yaml.safe_dump(data))
    done = distctl("check", str(inv), cwd=tmp_path)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- ssh_config as OpenSSH reads it


def _client_settings(cluster, known: str) -> str:
    """The `Host *` block every host needs: user, key, strict host keys from `known`."""
    return "\n".join(["Host *", f"    User {cluster.user}", f"    IdentityFile {cluster.key_path}",
                      "    IdentitiesOnly yes", f"    UserKnownHostsFile {known}",
                      "    GlobalKnownHostsFile /dev/null", "    StrictHostKeyChecking yes", ""])


def _config_inventory(path, cluster, config, hosts):
    """Hosts named only by alias; nothing but python and workdir comes from the inventory."""
    inventory = {
        "defaults": {"python": cluster.python},
        "hosts": [{"name": n, "address": a, "workdir": cluster.host(n).workdir} for n, a in hosts],
        "job": {"name": "t", "port": free_port(), "fallback": "generated"},
        "ssh": {"config": str(config)},
    }
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


def test_hosts_reached_only_through_aliases_defined_in_an_included_file(cluster, tmp_path):
    node1, node2 = cluster.host("node1"), cluster.host("node2")
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "10-fleet.conf").write_text(
        f"Host gpu-a # the first box\n    HostName {node1.address}\n    Port {node1.port}\n"
        f"Host gpu-b\n    HostName {node2.address} # replica\n    Port {node2.port}\n")
    config = tmp_path / "ssh_config"
    config.write_text(f"Include {tmp_path}/conf.d/*.conf\n" + _client_settings(cluster, cluster.known_hosts))
    inv = _config_inventory(tmp_path / "inv.yaml", cluster, config, [("node1", "gpu-a"), ("node2", "gpu-b")])
    done = distctl("check", str(inv), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"node1: ssh {cluster.user}@{node1.address}:{node1.port}" in lines
    assert f"node2: ssh {cluster.user}@{node2.address}:{node2.port}" in lines


def test_the_host_star_bastion_rule_with_proxyjump_none_on_the_bastion(jump_cluster, tmp_path):
    bastion, node5 = jump_cluster.host("bastion"), jump_cluster.host("node5")
    config = tmp_path / "ssh_config"
    config.write_text("\n".join([
        "Host bastion", f"    HostName {bastion.address}", f"    Port {bastion.port}", "    ProxyJump none",
        "Host node5", f"    HostName {node5.address}", f"    Port {node5.port}",
        "Host *", "    ProxyJump bastion", ""]) + _client_settings(jump_cluster, jump_cluster.known_hosts))
    inv = _config_inventory(tmp_path / "inv.yaml", jump_cluster, config, [("bastion", "bastion"), ("node5", "node5")])
    done = distctl("check", str(inv), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    user = jump_cluster.user
    lines = done.stdout.splitlines()
    assert f"bastion: ssh {user}@{bastion.address}:{bastion.port}" in lines
    assert (f"node5: ssh bastion ({user}@{bastion.address}:{bastion.port}) -> "
            f"{user}@{node5.address}:{node5.port}") in lines
    assert "node5: hostname node5" in done.stdout or not jump_cluster.isolated


def test_host_keys_known_only_from_the_global_known_hosts_file(cluster, tmp_path):
    node1 = cluster.host("node1")
    empty, global_known = tmp_path / "known_hosts", tmp_path / "ssh_known_hosts"
    empty.write_text("")
    key = " ".join((cluster.tmpdir / "node1" / "ssh_host_ed25519_key.pub").read_text().split()[:2])
    global_known.write_text(f"[{node1.address}]:{node1.port} {key}\n" if node1.port != 22
                            else f"{node1.address} {key}\n")
    config = tmp_path / "ssh_config"
    config.write_text(_client_settings(cluster, str(empty)).replace("GlobalKnownHostsFile /dev/null",
                                                                    f"GlobalKnownHostsFile {global_known}"))
    inv = _config_inventory(tmp_path / "inv.yaml", cluster, config, [("node1", node1.address)])
    data = yaml.safe_load(inv.read_text())
    data["hosts"][0]["port"] = node1.port
    inv.write_text(yaml.safe_dump(data))
    done = distctl("check", str(inv), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert empty.read_text() == ""  # nothing was recorded: the key was known
    global_known.write_text("")  # the same without the global entry: refused, as ssh would
    refused = distctl("check", str(inv), cwd=tmp_path)
    assert refused.returncode == 4, refused.stderr
    scan = f"-p {node1.port} {node1.address}" if node1.port != 22 else node1.address
    assert f"or add it with: ssh-keyscan {scan} >> {empty}" in refused.stderr


def test_a_jump_host_that_refuses_our_key_is_named_not_the_target(jump_cluster, tmp_path):
    import subprocess

    bastion, node5 = jump_cluster.host("bastion"), jump_cluster.host("node5")
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    config = tmp_path / "ssh_config"
    config.write_text("\n".join([
        "Host bastion", f"    HostName {bastion.address}", f"    Port {bastion.port}",
        f"    IdentityFile {other}",  # first value wins: the bastion gets a key it does not accept
        "Host node5", f"    HostName {node5.address}", f"    Port {node5.port}", "    ProxyJump bastion",
        ""]) + _client_settings(jump_cluster, jump_cluster.known_hosts).replace(
            f"    IdentityFile {jump_cluster.key_path}\n", ""))
    inv = _config_inventory(tmp_path / "inv.yaml", jump_cluster, config, [("node5", "node5")])
    data = yaml.safe_load(inv.read_text())
    data["hosts"][0]["identity_file"] = str(jump_cluster.key_path)  # like ssh -i: the target's, not the hop's
    inv.write_text(yaml.safe_dump(data))
    done = distctl("check", str(inv), cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    user = jump_cluster.user
    assert done.stderr.splitlines()[-2:] == [
        "distctl: error: connect failed on 1 host(s):",
        (f"  node5: jump host bastion ({bastion.address}): authentication failed for {user}@{bastion.address}: "
         "Authentication failed.")]


def test_a_misspelt_ssh_config_keyword_is_one_bad_input_line(cluster, tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text("Host *\n    IdentitiesOnly yes\n    StrictHostKeyCheking yes\n")
    inv = _config_inventory(tmp_path / "inv.yaml", cluster, config, [("node1", "node1"), ("node2", "node2")])
    done = distctl("check", str(inv), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1] == \
        f"distctl: error: {config}:3: Bad configuration option: stricthostkeycheking (ssh_config)"


def test_proxycommand_runs_through_the_shell_with_ssh_tokens(cluster, tmp_path):
    node1 = cluster.host("node1")
    config = tmp_path / "ssh_config"
    # OpenSSH's own client as the proxy, through node2; the redirection needs a shell
    config.write_text(f"Host via2\n    HostName {node1.address}\n    Port {node1.port}\n"
                      f"    ProxyCommand ssh -F {cluster.ssh_config} -W %h:%p node2 2>{tmp_path}/proxy.err\n"
                      + _client_settings(cluster, cluster.known_hosts))
    inv = _config_inventory(tmp_path / "inv.yaml", cluster, config, [("node1", "via2")])
    done = distctl("check", str(inv), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (f"node1: ssh ProxyCommand 'ssh -F {cluster.ssh_config} -W {node1.address}:{node1.port} node2 "
            f"2>{tmp_path}/proxy.err' -> {cluster.user}@{node1.address}:{node1.port}") in done.stdout.splitlines()


def test_a_proxycommand_that_cannot_run_is_one_line_naming_it(cluster, tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text("Host broken\n    HostName 10.0.0.1\n    ProxyCommand /nonexistent/proxy %h %p\n"
                      + _client_settings(cluster, cluster.known_hosts))
    inv = _config_inventory(tmp_path / "inv.yaml", cluster, config, [("node1", "broken")])
    done = distctl("check", str(inv), cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    assert done.stderr.splitlines()[-1] == (
        "  node1: ProxyCommand '/nonexistent/proxy 10.0.0.1 22' for 10.0.0.1:22 failed: "
        "/bin/sh: 1: exec: /nonexistent/proxy: not found")


def test_host_key_alias_and_new_keys_go_to_the_first_user_known_hosts_file(cluster, tmp_path):
    node1 = cluster.host("node1")
    first, second = tmp_path / "known_first", tmp_path / "known_second"
    key = " ".join((cluster.tmpdir / "node1" / "ssh_host_ed25519_key.pub").read_text().split()[:2])
    config = tmp_path / "ssh_config"
    config.write_text(f"Host gpu-a\n    HostName {node1.address}\n    Port {node1.port}\n    HostKeyAlias gpu-a-key\n"
                      + _client_settings(cluster, f"{first} {second}"))
    inv = _config_inventory(tmp_path / "inv.yaml", cluster, config, [("node1", "gpu-a")])
    refused = distctl("check", str(inv), cwd=tmp_path)
    assert refused.returncode == 4, refused.stderr
    assert "  node1: unknown host key for gpu-a-key (ssh-ed25519 " in refused.stderr
    accepted = distctl("check", "--accept-new-host-keys", str(inv), cwd=tmp_path)
    assert accepted.returncode == 0, accepted.stderr
    assert first.read_text() == f"gpu-a-key {key}\n"  # under the alias, in the first file, as ssh would
    assert not second.exists()
    again = distctl("check", str(inv), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
