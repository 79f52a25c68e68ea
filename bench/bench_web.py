"""The live view at scale: the server's memory and cost for 128 ranks x 20,000 points, and the
delay from a rank printing a progress line to the page's chart drawing it.

--memory (no cluster): a RunView fed through its real path (`view.line`: parse, downsample)
with 128 ranks x 20,000 progress lines of 3 keys each; prints the ingest rate, the growth of
the process's resident memory, and the size and build time of the snapshot a new page gets.

--hosts N (the namespaced cluster, root): one rank per host prints `distctl: step=N sent=TIME`
every 0.2 s (TIME: its clock, which is the workstation's: the hosts are namespaces of this
machine); `distctl web` serves the run and headless Chromium shows it. The page records when
it drew each series' newest point (window.distctlView.drawn); delay = draw time - sent. Also
the resident memory of the `distctl web` process.

Run:
    .venv/bin/python bench/bench_web.py --memory
    .venv/bin/python bench/bench_web.py --hosts 16 --seconds 30
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import DISTCTL, ROOT, cluster_of, distctl, distctl_env, write_inventory

PROGRAM = '''
import math, os, time
rank, step = int(os.environ["RANK"]), 0
while True:
    step += 1
    print("distctl: step=%d loss=%.5f sent=%.3f" % (step, 2 * math.exp(-step / 100) + 0.01 * rank, time.time()),
          flush=True)
    time.sleep(0.2)
'''


def rss_kb(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def bench_memory(ranks: int, points: int) -> None:
    from orchestrator.inventory.model import Host, Ssh
    from orchestrator.plan.state import HostState, RankState, RunState
    from orchestrator.web.view import Cursor, RunView

    hosts = tuple(HostState(Host(f"h{h:02d}", f"10.0.0.{h}"), "/w", tuple(RankState(h * 8 + i, i) for i in range(8)))
                  for h in range(ranks // 8))
    view = RunView(RunState("r", "/inv.yaml", Ssh(), ranks, "10.0.0.0", 1, hosts), "live")
    before = rss_kb()
    start = time.perf_counter()
    for step in range(points):
        for r in range(ranks):
            view.line(hosts[r // 8].host.name, r,
                      f"distctl: step={step} loss={1 / (step + 1):.5f} samples_per_s={900 + r:.1f} lr=0.001")
    ingest = time.perf_counter() - start
    grown = rss_kb() - before
    start = time.perf_counter()
    snapshot = json.dumps(view.delta(Cursor()), separators=(",", ":"))
    build = time.perf_counter() - start
    lines = ranks * points
    print(f"{ranks} ranks x {points} points x 3 keys: {lines / ingest:,.0f} lines/s ingested "
          f"({ingest:.1f} s), resident memory +{grown / 1024:.1f} MiB (log ring included), "
          f"{len(view.series)} series of <= {view.cap} buckets; a new page's snapshot "
          f"{len(snapshot) / 1e6:.1f} MB built in {build:.2f} s")
    page_timing(view)


def page_timing(view) -> None:
    """That view served and opened in headless Chromium: time to every chart drawn, and the
    time one redraw of every chart takes (the page redraws what a delta touched, once a frame)."""
    from playwright.sync_api import sync_playwright

    from orchestrator.web.server import Actions, LiveServer

    server = LiveServer(view, Actions(lambda rank, n: [], lambda: {"ok": False}), "t")
    server.start_thread()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=os.environ.get("DISTCTL_CHROMIUM", "/usr/bin/chromium"),
                                    args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        start = time.perf_counter()
        page.goto(server.url)
        page.wait_for_function(f"() => window.distctlView.drawn.size >= {len(view.series)}", timeout=300_000)
        loaded = time.perf_counter() - start
        charts = page.evaluate("() => document.querySelectorAll('.chart').length")
        redraw = statistics.median(page.evaluate("() => window.distctlView.redraw()") for _ in range(5))
        browser.close()
    server.close()
    print(f"the page with all of it: every chart drawn {loaded:.1f} s after it was opened; "
          f"a redraw of its {charts} charts takes {redraw:.0f} ms")


def bench_delay(hosts: int, seconds: float) -> None:
    from playwright.sync_api import sync_playwright

    with cluster_of(hosts) as cluster, tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "project").mkdir()
        (cwd / "project" / "train.py").write_text(PROGRAM)
        inv = write_inventory(cwd / "inv.yaml", cluster, [h.name for h in cluster.hosts], code="project",
                              command=["python", "train.py"], wait_for_rank0=False)
        distctl("up", str(inv), "--detach", cwd=cwd)
        run_id = json.loads(next((cwd / ".distctl-state" / "runs").glob("*.json")).read_text())["run_id"]
        log = cwd / "web.log"
        web = subprocess.Popen([*DISTCTL, "web", run_id], cwd=cwd, stderr=log.open("w"), env=distctl_env(cwd))
        try:
            deadline = time.monotonic() + 120
            while not (found := re.search(r"http://127\.0\.0\.1:\d+/\?token=\S+", log.read_text())):
                if time.monotonic() > deadline or web.poll() is not None:
                    raise SystemExit(f"distctl web did not start: {log.read_text()}")
                time.sleep(0.2)
            delays = sample(sync_playwright, found[0], hosts, seconds)
            memory = rss_kb(web.pid)
        finally:
            web.terminate()
            web.wait()
            distctl("stop", run_id, "--grace", "0", cwd=cwd)
    delays.sort()
    print(f"{hosts} hosts x 1 rank, a line each 0.2 s, {len(delays)} points drawn: line-to-chart delay median "
          f"{statistics.median(delays) * 1000:.0f} ms, p95 {delays[int(len(delays) * 0.95)] * 1000:.0f} ms, "
          f"max {delays[-1] * 1000:.0f} ms; distctl web resident memory {memory / 1024:.0f} MiB")


def sample(sync_playwright, url: str, ranks: int, seconds: float) -> list[float]:
    """Every newly drawn newest point of each rank's `sent` curve: draw time minus its print time."""
    seen: dict[tuple[int, int], float] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=os.environ.get("DISTCTL_CHROMIUM", "/usr/bin/chromium"),
                                    args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.wait_for_function(f"() => window.distctlView.drawn.size >= {ranks}", timeout=120_000)
        end, first = time.monotonic() + seconds, True
        while time.monotonic() < end:
            drawn = page.evaluate("() => [...window.distctlView.drawn].filter(([k]) => k.endsWith('/sent'))"
                                  ".map(([k, v]) => [parseInt(k), v.step, v.hi, v.at])")
            for rank, step, sent, at in drawn:  # the first look: points drawn when the page loaded, left out
                seen.setdefault((rank, step), math.nan if first else at / 1000 - sent)
            first = False
            page.wait_for_timeout(50)
        browser.close()
    return [d for d in seen.values() if not math.isnan(d)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memory", action="store_true", help="128 ranks x 20,000 points, no cluster")
    parser.add_argument("--ranks", type=int, default=128)
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--hosts", type=int, default=0, help="measure the line-to-chart delay on N hosts")
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    os.chdir(ROOT)
    if args.memory:
        bench_memory(args.ranks, args.points)
    if args.hosts:
        bench_delay(args.hosts, args.seconds)
