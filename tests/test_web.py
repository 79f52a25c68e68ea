"""The live view's pure parts and its HTTP guard: who may see the page and stop the run, the
progress lines it reads, the downsampling that bounds its memory, the failure report. Fast:
no browser and no cluster (tests/test_web_browser.py drives the real page on the cluster)."""

from __future__ import annotations

import http.client
import importlib.util
import json
import math
import re
import time
from pathlib import Path

import pytest

from orchestrator.inventory.model import Host, Ssh
from orchestrator.run.lifecycle import RankStatus
from orchestrator.plan.state import HostState, RankState, RunState
from orchestrator.web import security
from orchestrator.web.feed import PulledFeed, parse_health, parse_history, pulled_folder
from orchestrator.web.progress import Mark, Reading, parse_progress
from orchestrator.web.series import Series
from orchestrator.web.ranks import RankView, stragglers
from orchestrator.web.view import Cursor, RunView


def run_state(hosts: int = 2, slots: int = 2, trainer: bool = False) -> RunState:
    states = tuple(HostState(Host(f"node{h + 1}", f"10.0.0.{h + 1}"), "/w/runs/r-1",
                             tuple(RankState(h * slots + i, i) for i in range(slots))) for h in range(hosts))
    return RunState("r-1", "/inv.yaml", Ssh(), hosts * slots, "10.0.0.1", 29500, states, trainer=trainer,
                    started="2026-01-01T12:00:00+00:00")


# ------------------------------------------------------------------ security (pure)


@pytest.mark.parametrize("host, ok", [
    ("127.0.0.1", True), ("127.0.0.1:8800", True), ("localhost:1", True), ("LOCALHOST", True),
    ("[::1]", True), ("[::1]:8800", True),
    (None, False), ("", False), ("evil.example:8800", False), ("127.0.0.1.evil.example", False),
    ("localhost.evil.example:80", False), ("127.0.0.2:80", False), ("0.0.0.0:80", False), ("[::1]80", False),
    ("127.0.0.1:", False), ("127.0.0.1:80:90", False), ("[::2]:80", False), ("::1", False),
])
def test_only_a_loopback_host_header_is_allowed(host, ok):
    assert security.host_allowed(host) is ok


def test_the_token_must_be_given_exactly_in_one_place():
    token = security.new_token()
    assert len(token) >= 32
    assert security.request_allowed("127.0.0.1:1", token, None, token, None)
    assert not security.request_allowed("127.0.0.1:1", token, None, None, None)
    assert not security.request_allowed("127.0.0.1:1", token, token[:-1], "", token + "x")
    assert not security.request_allowed("evil.example", token, token)  # DNS rebinding: right token, wrong name


def test_stop_needs_the_header_token_and_the_pages_own_origin():
    token = "t0k"
    assert security.stop_allowed("127.0.0.1:8800", "http://127.0.0.1:8800", token, token)
    assert not security.stop_allowed("127.0.0.1:8800", None, token, token)
    assert not security.stop_allowed("127.0.0.1:8800", "http://evil.example", token, token)
    assert not security.stop_allowed("127.0.0.1:8800", "http://127.0.0.1:9999", token, token)
    assert not security.stop_allowed("127.0.0.1:8800", "http://127.0.0.1:8800", None, token)
    assert not security.stop_allowed("evil.example:8800", "http://evil.example:8800", token, token)


# ------------------------------------------------------------------ the server's guard, over HTTP


@pytest.fixture
def server(monkeypatch):
    pytest.importorskip("aiohttp")
    from orchestrator.run import stacks
    from orchestrator.web.command import WebOptions, _stacks
    from orchestrator.web.server import Actions, LiveServer

    stopped: list[bool] = []
    dumped: list[bool] = []
    monkeypatch.setattr(stacks, "take", lambda *args: dumped.append(True) or dumps_of_a_stuck_run())
    view = RunView(run_state(), "live")
    srv = LiveServer(view, Actions(lambda rank, n: [f"line {i}" for i in range(n)],
                                   lambda: stopped.append(True) or {"ok": True, "lines": ["stopped"]},
                                   lambda: _stacks(view.state, view, WebOptions(), lambda t: t.replace("s3", "***"))),
                     "s3cret")
    srv.start_thread()
    srv.stopped = stopped  # type: ignore[attr-defined]
    srv.dumped = dumped  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            http.client.HTTPConnection("127.0.0.1", srv.port, timeout=1).connect()
            break
        except OSError:
            time.sleep(0.05)
    yield srv
    srv.close()


def request(srv, method: str, path: str, headers: dict | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.putrequest(method, path, skip_host="Host" in (headers or {}))
    for k, v in {"Host": f"127.0.0.1:{srv.port}", **(headers or {})}.items():
        if k != "Host" or "Host" in (headers or {}):
            conn.putheader(k, v)
    conn.endheaders()
    return conn.getresponse()


def test_the_server_listens_on_loopback_only(server):
    assert server.sock.getsockname()[0] == "127.0.0.1"
    assert server.url == f"http://127.0.0.1:{server.port}/?token=s3cret"


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/events", "/api/state", "/api/log?rank=0"])
def test_every_route_is_403_without_the_token(server, path):
    r = request(server, "GET", path)
    assert r.status == 403
    assert b"token" in r.read()
    assert request(server, "GET", path + ("&" if "?" in path else "?") + "token=wrong").status == 403


def test_a_rebinding_host_name_is_refused_even_with_the_token(server):
    r = request(server, "GET", "/api/state?token=s3cret", {"Host": f"evil.example:{server.port}"})
    assert r.status == 403
    assert request(server, "GET", "/api/state?token=s3cret", {"Host": f"localhost:{server.port}"}).status == 200
    assert request(server, "GET", "/api/state?token=s3cret", {"Host": f"[::1]:{server.port}"}).status == 200


def test_the_urls_token_is_swapped_for_an_httponly_cookie(server):
    r = request(server, "GET", "/?token=s3cret")
    assert r.status == 303 and r.getheader("Location") == "/"
    cookie = r.getheader("Set-Cookie")
    assert f"distctl_token_{server.port}=s3cret" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    page = request(server, "GET", "/", {"Cookie": f"distctl_token_{server.port}=s3cret"})
    assert page.status == 200
    html = page.read().decode()
    assert '<meta name="distctl-token" content="s3cret">' in html
    assert page.getheader("Referrer-Policy") == "no-referrer" and "default-src 'none'" in page.getheader(
        "Content-Security-Policy")
    assert request(server, "GET", "/", {"Cookie": "distctl_token_1=s3cret"}).status == 403  # another port's


def test_stop_needs_the_header_and_a_same_origin_request(server):
    origin = f"http://127.0.0.1:{server.port}"
    cookie = {"Cookie": f"distctl_token_{server.port}=s3cret"}
    assert request(server, "POST", "/api/stop", {**cookie, "Origin": origin}).status == 403  # cookie alone: no
    assert request(server, "POST", "/api/stop?token=s3cret", {"Origin": origin}).status == 403  # URL token: no
    assert request(server, "POST", "/api/stop", {"X-Distctl-Token": "s3cret"}).status == 403  # no Origin
    assert request(server, "POST", "/api/stop", {"X-Distctl-Token": "s3cret",
                                                 "Origin": "http://evil.example"}).status == 403
    assert server.stopped == []
    r = request(server, "POST", "/api/stop", {"X-Distctl-Token": "s3cret", "Origin": origin})
    assert r.status == 200 and json.loads(r.read()) == {"ok": True, "lines": ["stopped"]}
    assert server.stopped == [True]


def dumps_of_a_stuck_run():
    """What run/stacks.take returns for a rank waiting in all_reduce and a host it could not reach."""
    from orchestrator.run.stacks import Frame, Process, RankDump, Thread

    work = "/w/run/work/"
    waits = Thread(1, (Frame("/usr/lib/python3/dist-packages/torch/distributed/distributed_c10d.py", 2000,
                             "all_reduce"), Frame(work + "train.py", 88, "step")))
    return ([RankDump("node1", 0, work, (Process(10, 1, "python", 1, (waits,)),)),
             RankDump("node2", 1, "", error="host unreachable: s3cret refused")], {}, {"node2": "s3cret refused"})


def test_stacks_needs_the_header_and_a_same_origin_request_and_answers_the_roll_call(server):
    origin = f"http://127.0.0.1:{server.port}"
    cookie = {"Cookie": f"distctl_token_{server.port}=s3cret"}
    assert request(server, "POST", "/api/stacks", {**cookie, "Origin": origin}).status == 403  # cookie alone: no
    assert request(server, "POST", "/api/stacks?token=s3cret", {"Origin": origin}).status == 403  # URL token: no
    assert request(server, "POST", "/api/stacks", {"X-Distctl-Token": "s3cret"}).status == 403  # no Origin
    assert request(server, "POST", "/api/stacks", {"X-Distctl-Token": "s3cret",
                                                   "Origin": "http://evil.example"}).status == 403
    assert request(server, "POST", "/api/stacks", {"X-Distctl-Token": "wrong", "Origin": origin}).status == 403
    assert server.dumped == []
    r = request(server, "POST", "/api/stacks", {"X-Distctl-Token": "s3cret", "Origin": origin})
    assert r.status == 200 and server.dumped == [True]
    found = json.loads(r.read())
    assert found["ok"] is False
    assert found["rollcall"] == ("rank 0 on node1 waits in all_reduce (train.py:88); "
                                 "rank 1 on node2: not dumped (host unreachable: ***cret refused)")  # masked
    assert found["missing"] == [{"rank": 1, "host": "node2", "why": "host unreachable: ***cret refused"}]
    assert "rank 0 (node1): main thread: waiting in all_reduce (train.py:88)" in found["lines"]
    assert "    step (train.py:88)  <- run's code" in found["lines"]
    assert re.fullmatch(r"saved on each host as <run dir>/stacks/\d{8}T\d{6}Z/rankR\.txt; distctl pull \S+ "
                        r"brings them back", found["lines"][-1])


def test_the_log_pane_loads_a_ranks_last_lines_on_demand(server):
    r = request(server, "GET", "/api/log?rank=1&lines=3&token=s3cret")
    assert r.status == 200 and json.loads(r.read()) == {"rank": 1, "lines": 3}
    state = json.loads(request(server, "GET", "/api/state?token=s3cret").read())
    assert [line[2:] for line in state["lines"]] == [["node1", 1, f"line {i}"] for i in range(3)]
    assert request(server, "GET", "/api/log?rank=9&token=s3cret").status == 404


# ------------------------------------------------------------------ progress lines


@pytest.mark.parametrize("line, found", [
    ("distctl: step=12 total=100 loss=0.5 lr=1e-3", Reading(12, {"loss": 0.5, "lr": 0.001}, 100)),
    ("distctl: step=3 loss=nan acc=0.9 note=warmup", Reading(3, {"acc": 0.9})),
    ("epoch=2 rank=1 loss=0.31 samples_per_s=15000", Reading(2, {"loss": 0.31, "samples_per_s": 15000.0})),
    ("--- distctl: restart 1/3 after node2 r1 exited 137 ---", Mark("restart 1/3 after node2 r1 exited 137")),
    ("distctl: step=x loss=1", None), ("joined rank=0 world_size=2", None), ("loss=0.5", None),
    ("Epoch 3: loss=0.2", None),
])
def test_progress_lines_become_readings_and_marks(line, found):
    assert parse_progress(line) == found


@pytest.mark.parametrize("line, found", [
    (" 12%|#2        | 120/1000 [00:37<04:35,  3.20it/s]", Reading(120, {}, 1000)),
    ("120it [00:37,  3.20it/s]", Reading(120)),
    ("distctl: step=4 epoch=1 rank=1 loss=2", Reading(4, {"loss": 2.0})),
])
def test_the_view_reads_progress_with_the_parser_status_uses(line, found):
    from orchestrator.hostside.tracking import parse

    assert parse_progress(line) == found
    assert parse(line.encode())[0] == found.step


# ------------------------------------------------------------------ downsampling


def test_a_series_keeps_at_most_cap_buckets_and_every_bucket_the_same_count():
    s = Series(cap=8)
    for i in range(1000):
        s.add(i, i * 0.5, float(i % 10))
    assert len(s) <= 8 and s.stride == 128 and list(s.n)[:-1] == [128] * (len(s) - 1)
    assert sum(s.n) == 1000 and s.step[-1] == 999 and s.t[-1] == 999 * 0.5
    assert min(s.lo) == 0 and max(s.hi) == 9  # the extremes survive every merge
    assert s.mean[0] == pytest.approx(sum(i % 10 for i in range(128)) / 128)


def test_a_spike_survives_downsampling_in_its_buckets_maximum():
    s = Series(cap=16)
    for i in range(20_000):
        s.add(i, math.nan, 1000.0 if i == 12_345 else 1.0)
    assert max(s.hi) == 1000.0 and sum(1 for v in s.hi if v == 1000.0) == 1


def test_a_page_gets_each_bucket_once_and_a_series_again_only_after_a_merge():
    view = RunView(run_state(hosts=1, slots=1), "live", clock=lambda: 1767268800.0 + 5)
    cursor = Cursor()
    for step in range(3):
        view.line("node1", 0, f"distctl: step={step} loss={step}")
    first = view.delta(cursor)["series"][0]
    assert (first["from"], [p[0] for p in first["points"]]) == (0, [0, 1, 2])
    assert "series" not in view.delta(cursor)
    view.line("node1", 0, "distctl: step=3 loss=3")
    again = view.delta(cursor)["series"][0]
    assert (again["from"], [p[0] for p in again["points"]]) == (3, [3])
    for step in range(4, 400):
        view.line("node1", 0, f"distctl: step={step} loss={step}")
    merged = view.delta(cursor)["series"][0]
    assert merged["from"] == 0 and merged["gen"] > 0 and len(merged["points"]) <= view.cap


def test_128_ranks_stay_bounded_however_long_the_run():
    """The full-size case (20,000 points each: memory, snapshot size) is bench/bench_web.py."""
    view = RunView(run_state(hosts=16, slots=8), "live", clock=time.time, cap=16)
    for step in range(600):
        for rank in range(128):
            view._reading(view.ranks[rank], Reading(step, {"loss": 1 / (step + 1), "tput": 100.0}), step * 0.1, None)
    assert len(view.series) == 256 and all(len(s) <= 16 and sum(s.n) == 600 for s in view.series.values())
    snapshot = json.loads(json.dumps(view.delta(Cursor())))
    assert len(snapshot["series"]) == 256 and all(len(u["points"]) <= 16 for u in snapshot["series"])


# ------------------------------------------------------------------ the view's report


def test_the_failure_report_names_the_culprit_and_the_collateral():
    view = RunView(run_state(hosts=2, slots=1, trainer=True), "live")
    view.line("node2", 1, "Traceback (most recent call last):")
    view.line("node2", 1, "RuntimeError: CUDA out of memory")
    view.exit("node1", 0, 4, 1000.5)  # the trainer's peer-lost: a consequence, read first
    view.exit("node2", 1, 1, 1000.0)
    report = view.failure()
    assert report == {"rank": 1, "host": "node2", "code": 1,
                      "tail": ["Traceback (most recent call last):", "RuntimeError: CUDA out of memory"],
                      "collateral": [{"rank": 0, "host": "node1", "code": 4}]}


def test_a_stopped_trainer_run_is_no_failure_and_a_frozen_report_outlives_stop():
    view = RunView(run_state(hosts=1, slots=2, trainer=True), "live")
    view.statuses("node1", [RankStatus(0, "exited", 143, 1.0), RankStatus(1, "exited", 143, 1.0)], None)
    assert view.failure() is None
    assert view.delta(Cursor())["run"]["state"] == "stopped"


def test_stragglers_lag_in_steps_or_fall_silent():
    def rank(r: int, step: int, heard: float) -> RankView:
        return RankView(r, "n", state="running", step=step, heard=heard)

    now = 100.0
    assert stragglers([rank(0, 50, 99), rank(1, 50, 99), rank(2, 44, 99)], now) == {2}
    assert stragglers([rank(0, 50, 99), rank(1, 50, 99), rank(2, 50, 60)], now) == {2}
    assert stragglers([rank(0, 50, 99), rank(1, 49, 98)], now) == set()


def test_host_health_and_history_parse_from_their_commands_output():
    out = ("load 0.52 0.40 0.33\nmem MemTotal: 16000000\nmem MemAvailable: 4000000\niface ens5\n"
           "gpu 87, 30000, 81920\nrank=0 state=running\n")
    assert parse_health(out) == {"load": [0.52, 0.40, 0.33], "mem_total": 16000000, "mem_available": 4000000,
                                 "interface": "ens5", "gpus": [{"util": 87.0, "mem_used": 30000.0,
                                                                "mem_total": 81920.0}]}
    assert parse_history("count 0 120\nended 0\nh 0 distctl: step=1 loss=2\ncount 1 0\n") == (
        {0: 120, 1: 0}, [(0, "distctl: step=1 loss=2")], {0})


# ------------------------------------------------------------------ install and finished runs


def test_the_light_install_pulls_no_web_server_and_the_web_extra_does():
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=~\[ ;]", d)[0].lower() for d in project["dependencies"]}
    assert not names & {"torch", "aiohttp", "starlette", "uvicorn", "playwright"}
    assert [d for d in project["optional-dependencies"]["web"] if d.startswith("aiohttp")]


@pytest.mark.parametrize("argv", [["web", "r-1"], ["up", "inventory.yaml", "--web"]])
def test_without_the_web_extra_distctl_says_in_one_line_what_to_install(argv, monkeypatch):
    from click.testing import CliRunner

    from orchestrator.cli.main import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "aiohttp" else real(name, *a))
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 2
    assert result.output == "distctl: error: the live view needs the web extra: pip install 'distctl[web]' (aiohttp)\n"


def test_a_finished_run_whose_hosts_are_gone_shows_what_pull_brought_back(tmp_path):
    state = run_state(hosts=1, slots=2)
    folder = tmp_path / "runs" / state.run_id
    folder.mkdir(parents=True)
    (folder / "rank0.log").write_text("joined\ndistctl: step=1 loss=2\ndistctl: step=2 loss=1\nbye\n")
    (folder / "rank1.log").write_text("distctl: step=1 loss=3\n")
    assert pulled_folder(state, tmp_path) == folder
    view = RunView(state, "pulled")
    feed = PulledFeed(state, view, folder)
    feed.start()
    snapshot = view.delta(Cursor())
    assert {(u["rank"], u["key"], len(u["points"])) for u in snapshot["series"]} == {(0, "loss", 2), (1, "loss", 1)}
    assert [line[4] for line in snapshot["lines"] if line[3] == 0][-1] == "bye"
    assert [r["state"] for r in snapshot["ranks"]] == ["unknown", "unknown"]
    assert feed.log_tail(0, 2) == ["distctl: step=2 loss=1", "bye"]


def test_a_restart_is_one_mark_however_many_logs_and_agents_say_it():
    view = RunView(run_state(hosts=2, slots=1), "live")
    view.line("node1", 0, "distctl: step=7 loss=1")
    for host, rank in (("node1", 0), ("node2", 1)):
        view.line(host, rank, "--- distctl: restart 1/3 after node2 r1 exited 137 ---")
        view.event(host, "restart 1/3 after node2 r1 exited 137")
    view.event("node1", "dropped node2")
    marks = view.delta(Cursor())["marks"]
    assert [(m["text"], m["step"]) for m in marks] == [("restart 1/3 after node2 r1 exited 137", 7),
                                                      ("node2 dropped from the run", 7)]
    assert view.delta(Cursor())["run"]["restarts"] == 1


def test_values_reach_the_page_exactly():
    view = RunView(run_state(hosts=1, slots=1), "live")
    view.line("node1", 0, "distctl: step=1 sent=1765012345.678 tokens=123456789")
    points = {u["key"]: u["points"][0][2:] for u in view.delta(Cursor())["series"]}
    assert points == {"sent": [1765012345.678] * 3, "tokens": [123456789.0] * 3}


def test_a_restarted_job_keeps_the_report_of_the_failure_it_recovered_from():
    view = RunView(run_state(hosts=2, slots=1), "live")
    view.line("node2", 1, "distctl: step=5 loss=1")
    view.line("node2", 1, "RuntimeError: boom")
    view.exit("node2", 1, 1, 10.0)
    view.event("node1", "restart 1/2 after node2 r1 exited 1")
    view.statuses("node2", [RankStatus(1, "running")], {"attempt": 1})
    report = view.delta(Cursor())
    assert report["failure"]["rank"] == 1 and report["failure"]["restarted"] is True
    assert [(r["state"], r["code"]) for r in report["ranks"]] == [("starting", None), ("running", None)]
    assert [(m["text"], m["step"]) for m in report["marks"]] == [("restart 1/2 after node2 r1 exited 1", 5)]


def test_a_status_poll_of_the_attempt_a_restart_ended_is_not_a_new_failure():
    """On a loaded machine a poll taken before the restart is read after it: the teardown's exits it
    shows (rank 0 ended 143 by the restart) belong to the attempt before, not to a new failure."""
    view = RunView(run_state(hosts=2, slots=1), "live")
    view.exit("node2", 1, 3, 10.0)
    view.event("node1", "restart 1/1 after node2 r1 exited 3")
    view.statuses("node1", [RankStatus(0, "exited", 143)], {"attempt": 0})  # the late poll of attempt 0
    report = view.delta(Cursor())
    assert report["failure"]["rank"] == 1 and report["failure"]["restarted"] is True
    ended = {"attempt": 1, "outcome": "exhausted: restarts exhausted (1/1): node1 r0 exited 1"}
    view.statuses("node1", [RankStatus(0, "exited", 1)], ended)  # attempt 1's own failure counts
    assert view.delta(Cursor())["failure"]["rank"] == 0


def test_a_rank_that_failed_under_a_watcher_is_a_failure_at_once():
    """Every run has an agent; one without restarts (a watcher, max_restarts 0) restarts nothing:
    a rank that failed while it still watches is a failure, not `restarting`."""
    view = RunView(run_state(hosts=2, slots=1), "live")
    view.line("node2", 1, "ValueError: bad batch")
    watching = {"attempt": 0, "max_restarts": 0, "restarts": [], "outcome": None, "gone": False}
    view.statuses("node2", [RankStatus(1, "exited", 7, 10.0)], watching)
    report = view.delta(Cursor())
    assert report["failure"]["rank"] == 1 and report["failure"]["code"] == 7
    assert [r["state"] for r in report["ranks"]][1] == "exited"


def test_the_teardown_of_a_restart_is_not_a_new_failure_however_its_news_is_ordered():
    """The coordinator agent says `restart 1/1`, records attempt 1, then stops every rank: a poll
    during that teardown shows attempt 1 and the torn-down ranks exited 143 (the status script says
    `exited` for a rank whose exit file is written while its group still lives). Seen on the test
    cluster, before or after the restart's event: one poll of each host named rank 2 (143) the
    culprit. While its host's agent lives and has not decided how the run ends, a rank that exited
    non-zero is restarting; the agent's restart event names the culprit."""
    tearing_down = {"attempt": 1, "max_restarts": 1, "restarts": ["node2 r3 exited 3"], "outcome": None,
                    "gone": False}
    teardown = [("node1", [RankStatus(0, "exited", 143, 20.0), RankStatus(1, "exited", 143, 20.0)]),
                ("node2", [RankStatus(2, "exited", 143, 20.0), RankStatus(3, "restarting")])]
    for event_first in (True, False):
        view = RunView(run_state(hosts=2, slots=2), "live")
        view.line("node2", 3, "RuntimeError: injected failure on rank 3 at step 40")
        if event_first:
            view.event("node1", "restart 1/1 after node2 r3 exited 3")
        for host, found in teardown:
            view.statuses(host, found, tearing_down)
            failure = view.delta(Cursor())["failure"]
            assert failure is None or (failure["rank"], failure["code"], failure.get("restarted")) == (3, 3, True)
        view.line("node1", 0, "--- distctl: restart 1/1 after node2 r3 exited 3 ---")  # the marker, at relaunch
        report = view.delta(Cursor())
        assert report["failure"] == {"rank": 3, "host": "node2", "code": 3, "collateral": [], "restarted": True,
                                     "tail": ["RuntimeError: injected failure on rank 3 at step 40"]}
        assert [r["state"] for r in report["ranks"]] == ["restarting"] * 4
        view.request_stop()  # the page's Stop: the report it showed outlives it
        view.statuses("node2", [RankStatus(2, "exited", 143, 30.0), RankStatus(3, "exited", 143, 30.0)],
                      {**tearing_down, "gone": True})
        assert (view.failure() or {}).get("rank") == 3
