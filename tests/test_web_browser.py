"""The live view in a real headless browser (Debian's chromium, driven by Playwright), against
a run on the test cluster: refused without the token, loaded with it; the curves advance while
the run trains; a failed rank shows its report; the Stacks button shows every rank's stacks;
the Stop button stops the run on every host.

The run is a torch-free stand-in that prints the progress format (`distctl: step=N KEY=NUMBER`):
the mechanism under test is the view, not training. One run covers all of it, to keep CI short.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import cannot_run
from e2e import DISTCTL, distctl, kill_tree, last_run_id, recorded_runs, run_pids, wait_for, write_inventory

pytestmark = pytest.mark.cluster

CHROMIUM = os.environ.get("DISTCTL_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent

# Every rank trains until stopped, keeping its step in a file every 10 steps (a checkpoint: a
# restarted rank goes on from it). Rank FAIL_RANK fails with a traceback once the file TRIGGER
# exists, and removes it (the test makes it: on a loaded machine, a failure at a fixed step
# could come before `up --detach` has seen every rank run, which it checks).
PROGRAM = '''
import math, os, sys, time

def train(rank, fail_rank, trigger):
    saved = "step-%d" % rank
    step = int(open(saved).read()) if os.path.exists(saved) else 0
    while True:
        step += 1
        loss = 2.3 * math.exp(-step / 50) + 0.08 + 0.02 * rank + 0.03 * math.sin(step / 3 + rank)
        rate = 900 + 40 * rank + 25 * math.sin(step / 7 + rank)
        print("distctl: step=%d total=100000 loss=%.5f samples_per_s=%.1f" % (step, loss, rate), flush=True)
        if step % 10 == 0:
            open(saved, "w").write(str(step))
        if rank == fail_rank and os.path.exists(trigger):
            os.remove(trigger)
            print("Traceback (most recent call last):", flush=True)
            print("RuntimeError: injected failure on rank %d at step %d" % (rank, step), flush=True)
            sys.exit(3)
        time.sleep(0.1)

train(int(os.environ["RANK"]), int(sys.argv[1]), sys.argv[2])
'''


def start_web(*args: str, cwd: Path) -> tuple[subprocess.Popen, str]:
    """`distctl ARGS` in the background, and the live view's URL once it printed it."""
    log = cwd / "web.log"
    proc = subprocess.Popen([*DISTCTL, *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=log.open("w"), env={**os.environ, "NO_COLOR": "1"}, start_new_session=True)

    def url() -> str | None:
        found = re.search(r"http://127\.0\.0\.1:\d+/\?token=\S+", log.read_text())
        assert found or proc.poll() is None, f"distctl exited {proc.returncode}: {log.read_text()}"
        return found[0] if found else None

    return proc, wait_for(url, 60, "distctl web to print its URL")


def test_the_live_view_shows_a_training_run_its_failure_and_restart_and_stops_it(cluster, tmp_path):
    if not os.access(CHROMIUM, os.X_OK):
        cannot_run(f"no browser at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    code = tmp_path / "project"
    code.mkdir()
    (code / "train.py").write_text(PROGRAM)
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node2"], slots=2, code="project",
                          command=["python", "train.py", "3", str(tmp_path / "fail-now")], wait_for_rank0=False,
                          max_restarts=1)
    up = distctl("up", str(inv), "--detach", cwd=tmp_path)
    assert up.returncode == 0, up.stderr[-3000:]
    run_id = last_run_id(tmp_path)
    assert run_id
    web, url = start_web("web", run_id, "--grace", "5", cwd=tmp_path)
    try:
        base = url.split("?")[0]
        with pytest.raises(urllib.error.HTTPError) as refused:  # no token: refused, nothing shown
            urllib.request.urlopen(base, timeout=10)
        assert refused.value.code == 403

        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            asked: list[str] = []
            page.on("request", lambda request: asked.append(request.url))
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            assert page.goto(base).status == 403
            assert "token" in page.content()
            assert page.goto(url).status == 200 and page.url == base  # the token went into a cookie
            page.wait_for_function("() => window.distctlView.drawn.size >= 4", timeout=60_000)
            assert page.text_content("#run-id") == run_id

            # The curves advance: each rank's chart reaches further while the run trains.
            drawn = "() => [0, 1, 2, 3].map(r => (window.distctlView.drawn.get(r + '/loss') || {step: 0}).step)"
            before = page.evaluate(drawn)
            page.wait_for_function(f"() => ({drawn})().every((s, i) => s >= {before}[i] + 10)", timeout=60_000)
            assert {"loss", "samples_per_s"} <= set(page.locator(".chart h3").all_text_contents())
            assert asked and all(u.startswith(base) for u in asked), asked  # nothing from elsewhere: works offline
            page.fill("#rank-filter", "0,2-2")  # the charts show the ranks picked, over time too
            page.select_option("#x-axis", "t")
            page.wait_for_function("() => [...document.querySelectorAll('.legend')][0].textContent === 'rank 0rank 2'")
            page.fill("#rank-filter", "")
            page.select_option("#x-axis", "step")

            # Rank 3 fails: the report names it, its exit code and its last lines; the job restarts
            # (a mark on the charts) and trains on. Every title the report ever shows is kept: the
            # restart's teardown (ranks ended 143) must never be named, however briefly.
            page.evaluate("""() => { const t = document.getElementById('failure-title'); window.titles = [];
                new MutationObserver(() => window.titles.push(t.textContent))
                    .observe(t, {childList: true, characterData: true, subtree: true}); }""")
            (tmp_path / "fail-now").touch()
            page.wait_for_function("() => document.getElementById('failure-title').textContent.includes('restarted')",
                                   timeout=60_000)
            title = "rank 3 on node2 failed first: exited with code 3 (the job restarted after it)"
            assert page.text_content("#failure-title") == title
            marks = page.evaluate("() => window.distctlView.model.marks.map(m => m.text)")
            assert marks == ["restart 1/1 after node2 r3 exited 3"]
            assert "RuntimeError: injected failure on rank 3 at step" in page.text_content("#failure-tail")
            before = page.evaluate(drawn)
            page.wait_for_function(f"() => ({drawn})().every((s, i) => s >= {before}[i] + 10)", timeout=60_000)

            # The log pane: the culprit's log, its last lines loaded on demand from its host.
            page.click("#failure-log")
            assert page.input_value("#log-rank") == "3"
            page.click("#log-load")
            loaded = "() => [...document.querySelectorAll('#log .loaded')].some(l => l.textContent.includes('Runtime'))"
            page.wait_for_function(loaded, timeout=30_000)
            assert all(t.startswith("[node2 r3] ") for t in page.locator("#log > div").all_text_contents())
            page.select_option("#log-rank", "")

            # Stacks, as `distctl stacks` takes them: the roll-call says where each rank is, and
            # the dumps are saved in the run directory on each host.
            page.click("#stacks")
            page.wait_for_function("() => document.getElementById('stacks-text').textContent.includes('saved on')",
                                   timeout=60_000)
            rollcall = page.text_content("#stacks-rollcall")
            assert all(re.fullmatch(r"ranks? [\d,-]+( on [\w,]+)? (are|is) in train \(train\.py:\d+\)", part)
                       for part in rollcall.split("; ")), rollcall  # a line each rank may be caught on
            stamp = re.search(r"stacks/(\w+)/rankR\.txt", page.text_content("#stacks-text"))[1]
            record = next(r for r in recorded_runs() if r["run_id"] == run_id)
            for hs in record["hosts"]:
                saved = cluster.host(hs["host"]["name"]).run(["ls", f"{hs['rundir']}/stacks/{stamp}"]).stdout.split()
                assert saved == [f"rank{r['rank']}.txt" for r in hs["ranks"]]

            shot = tmp_path / "live-view.png"
            done = subprocess.run([sys.executable, str(ROOT / "scripts" / "web_screenshot.py"), url, str(shot)],
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr[-2000:]
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
            if os.environ.get("DISTCTL_WEB_SCREENSHOT"):  # regenerate the README's picture
                Path(os.environ["DISTCTL_WEB_SCREENSHOT"]).write_bytes(shot.read_bytes())

            # Stop, confirmed: no process of the run is left on any host.
            assert any(run_pids(cluster, run_id).values())
            page.click("#stop")
            page.click("#confirm-stop")
            wait_for(lambda: not any(run_pids(cluster, run_id).values()), 60, "every rank to be stopped")
            page.wait_for_function("() => window.distctlView.model.run.state === 'stopped'", timeout=60_000)
            assert page.text_content("#failure-title") == title  # the report outlives Stop
            assert set(page.evaluate("() => window.titles")) == {title}
            assert errors == []
            browser.close()
    finally:
        kill_tree(web)
        distctl("stop", run_id, "--grace", "1", cwd=tmp_path)


def test_up_web_serves_the_view_while_up_follows_the_run_and_web_shows_it_finished(cluster, tmp_path):
    code = tmp_path / "project"
    code.mkdir()
    (code / "train.py").write_text(PROGRAM)
    inv = write_inventory(tmp_path / "inv.yaml", cluster, ["node1", "node3"], code="project",
                          command=["python", "train.py", "1", str(tmp_path / "fail-now")], wait_for_rank0=False)
    up, url = start_web("up", str(inv), "--web", cwd=tmp_path)
    try:
        wait_for(lambda: min(loss_points(url).values(), default=0) >= 20, 60, "20 points of each rank's loss")
        (tmp_path / "fail-now").touch()
        assert up.wait(timeout=120) == 1  # rank 1 failed: up reports it as it does without --web
        assert "rank 1 on node3 failed first: exited with code 3" in (tmp_path / "web.log").read_text()
    finally:
        kill_tree(up)

    # The finished run, from its hosts: whole curves (each rank's progress history), the report.
    run_id = last_run_id(tmp_path)
    assert run_id
    web, url = start_web("web", run_id, cwd=tmp_path)
    try:
        state = wait_for(lambda: (s := api_state(url)).get("failure") and s, 60, "the finished run's report")
        assert state["run"]["state"] == "failed"
        assert (state["failure"]["rank"], state["failure"]["code"]) == (1, 3)
        wait_for(lambda: (n := loss_points(url)).keys() == {0, 1} and min(n.values()) >= 20, 60, "both ranks' curves")
        web.send_signal(signal.SIGINT)  # Ctrl-C: the view closes, as `logs -f` does
        assert web.wait(timeout=30) == 130
        assert f"live view closed; run {run_id} goes on" in (tmp_path / "web.log").read_text()
    finally:
        kill_tree(web)


def api_state(url: str) -> dict:
    with urllib.request.urlopen(url.replace("/?", "/api/state?"), timeout=10) as r:
        return json.loads(r.read())


def loss_points(url: str) -> dict[int, int]:
    return {u["rank"]: len(u["points"]) for u in api_state(url).get("series", []) if u["key"] == "loss"}
