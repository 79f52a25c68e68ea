"""After one attempt of a Slurm run (one srun, every rank ended): restart the ranks or end the
run, decided by the restart policy of the agents over SSH (agent_policy.decide), from the run's
files alone.

    slurm_policy.py CONFIG_JSON ATTEMPT

Run by the batch script in the run directory once srun has returned. CONFIG_JSON is
{"slots": N, "max_restarts": N, "final_codes": [...], "peer_lost": [...]}: the ranks per node,
and the codes that are never restarted and those that are a consequence, never the cause (143:
srun's --kill-on-bad-exit terminated the rank; the trainer's 4: a peer was lost). The hosts are
the allocation's nodes, in the order of the `nodes` file, with the ranks in blocks of `slots` (as
srun places them), each named by its ranks' rankR.node where there is one. A rank's exit is the
code in rankR.exit at that file's mtime; a rank without one was killed before its wrapper could
write it (no code, as over SSH). The allocation is fixed: no host is ever lost or dropped.

Appends the decision, worded as the SSH agents word it, to `events` (the login node's follower
relays it), and prints one word: restart, done, stopped, failed (not restarted: a code a restart
would repeat, or no job.max_restarts) or exhausted.
"""

from __future__ import annotations

import json
import os
import sys

from orchestrator.hostside.agent_policy import Exit, decide


def read(name: str) -> str:
    try:
        with open(name) as f:
            return f.read().strip()
    except OSError:
        return ""


def attempt_exits(world: int) -> dict[int, Exit]:
    """rank -> (code, mtime) from the rankR.exit files; (None, inf) where there is none."""
    exits: dict[int, Exit] = {}
    for rank in range(world):
        name = "rank%d.exit" % rank
        try:
            exits[rank] = (int(read(name)), os.path.getmtime(name))
        except (ValueError, OSError):
            exits[rank] = (None, float("inf"))
    return exits


def policy_config(cfg: dict, nodes: list, names: dict) -> dict:
    """The configuration of the agents (agent_policy) for this allocation: one host per node."""
    slots = cfg["slots"]
    hosts = []
    for i, node in enumerate(nodes):
        ranks = list(range(i * slots, (i + 1) * slots))
        hosts.append({"name": next((names[r] for r in ranks if names.get(r)), node), "ranks": ranks})
    return {"hosts": hosts, "max_restarts": cfg["max_restarts"], "min_hosts": len(nodes),
            "final_codes": cfg["final_codes"], "peer_lost": cfg["peer_lost"], "lost_after": 0.0, "settle": 0.0}


def verdict(cfg: dict, attempt: int, nodes: list, names: dict, exits: dict, stopping: bool) -> tuple:
    """(word, event) for the attempt that just ended (pure). Every rank has ended, so the policy
    never waits: no failure is still settling and no host is silent."""
    policy = policy_config(cfg, nodes, names)
    every: dict[int, Exit] = {r: exits.get(r, (None, float("inf"))) for h in policy["hosts"] for r in h["ranks"]}
    action = decide(policy, attempt, list(range(len(nodes))), every, {}, stopping, float("inf"))
    if action[0] == "done":
        return "done", ""
    if action[0] == "restart":
        return "restart", "restart %d/%d after %s" % (attempt + 1, cfg["max_restarts"], action[2])
    if action[0] == "end" and action[1] in ("stopped", "failed", "exhausted"):
        return action[1], "" if action[1] == "stopped" else "end %s: %s" % (action[1], action[2])
    return "failed", "end failed: the restart policy answered %s" % (action,)


def main(argv: list) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: slurm_policy.py CONFIG_JSON ATTEMPT\n")
        return 2
    cfg, attempt = json.loads(argv[0]), int(argv[1])
    nodes = read("nodes").split()
    world = cfg["slots"] * len(nodes)
    names = {r: read("rank%d.node" % r) for r in range(world)}
    word, event = verdict(cfg, attempt, nodes, names, attempt_exits(world), os.path.exists("stopping"))
    if event:
        with open("events", "a") as f:
            f.write(event + "\n")
    print(word)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
