"""job.outputs without SSH: the host-side lister/sender, name safety, placement, checkpoint labels."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.hostside import outputs as hostside
from orchestrator.results.destinations import HostListing, Placement, RemoteFile, place, unsafe_reason

HOSTSIDE = Path(hostside.__file__).read_text()


def run_hostside(*args: str) -> subprocess.CompletedProcess:
    """The module exactly as a host runs it: `python -c SOURCE ARGS`, nothing else importable."""
    return subprocess.run([sys.executable, "-I", "-c", HOSTSIDE, *args], capture_output=True, cwd="/")


def lines(out: bytes) -> list[dict]:
    return [json.loads(line) for line in out.decode().splitlines()]


@pytest.fixture
def work(tmp_path):
    w = tmp_path / "work"
    for rel, data in {"model.pt": b"M" * 10, "metrics.jsonl": b"{}\n", "ckpt/a.pt": b"a", "ckpt/b.pt": b"bb",
                      "ckpt/old/c.pt": b"c", "logs/rank0.log": b"l0", "logs/deep/x.txt": b"x",
                      ".hidden/h.pt": b"h", "ckpt/.tmp.pt": b"t", "train.py": b"print()"}.items():
        (w / rel).parent.mkdir(parents=True, exist_ok=True)
        (w / rel).write_bytes(data)
    (w / "ckpt" / "passwd.pt").symlink_to("/etc/passwd")
    (w / "linked").symlink_to("/etc")
    os.mkfifo(w / "ckpt" / "fifo.pt")
    return w


def test_lister_globs_sizes_and_digests(work):
    done = run_hostside("list", str(work), "model.pt", "ckpt/*.pt", "**/*.txt", "nothing*")
    assert done.returncode == 0, done.stderr
    assert lines(done.stdout) == [
        {"path": "ckpt/a.pt", "size": 1, "sha256": "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"},
        {"path": "ckpt/b.pt", "size": 2, "sha256": "3b64db95cb55c763391c707108489ae18b4112d783300de38e033b4c98c3deaf"},
        {"path": "ckpt/fifo.pt", "skipped": "not a regular file"},
        {"path": "ckpt/passwd.pt", "skipped": "symlink"},
        {"path": "logs/deep/x.txt", "size": 1,
         "sha256": "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"},
        {"path": "model.pt", "size": 10, "sha256": hashlib.sha256(b"M" * 10).hexdigest()},
        {"unmatched": "nothing*"},
    ]


def test_a_folder_pattern_takes_everything_below_it_and_double_star_skips_dot_names(work):
    got = [x.get("path") for x in lines(run_hostside("list", str(work), "logs", "**/*.pt").stdout)]
    assert got == ["ckpt/a.pt", "ckpt/b.pt", "ckpt/fifo.pt", "ckpt/old/c.pt", "ckpt/passwd.pt",
                   "logs/deep/x.txt", "logs/rank0.log", "model.pt"]
    got = [x.get("path") for x in lines(run_hostside("list", str(work), ".hidden/*", "ckpt/.*").stdout)]
    assert got == [".hidden/h.pt", "ckpt/.tmp.pt"]


def test_patterns_cannot_leave_the_work_folder_nor_follow_links(work):
    hostile = ("../*", "/etc/passwd", "linked/*", "linked", "./ckpt/../model.pt")
    got = lines(run_hostside("list", str(work), *hostile).stdout)
    assert got == [{"path": "linked", "skipped": "symlink"}, {"unmatched": "../*"}, {"unmatched": "/etc/passwd"},
                   {"unmatched": "linked/*"}, {"unmatched": "./ckpt/../model.pt"}]


def test_lister_on_a_missing_folder_exits_3(tmp_path):
    done = run_hostside("list", str(tmp_path / "nope"), "*")
    assert (done.returncode, done.stdout) == (3, b"")


def test_sender_frames_each_file_and_refuses_links_and_dotdot(work):
    done = run_hostside("send", str(work), json.dumps(["ckpt/b.pt", "ckpt/passwd.pt", "linked/passwd",
                                                        "../work/model.pt", "ckpt/fifo.pt", "model.pt"]))
    out = io.BytesIO(done.stdout)
    assert json.loads(out.readline()) == {"path": "ckpt/b.pt", "size": 2}
    assert out.read(2) == b"bb"
    assert json.loads(out.readline())["complete"] is True
    for path in ("ckpt/passwd.pt", "linked/passwd", "../work/model.pt", "ckpt/fifo.pt"):
        header = json.loads(out.readline())
        assert header["path"] == path and "error" in header, header
    assert json.loads(out.readline()) == {"path": "model.pt", "size": 10}
    assert out.read(10) == b"M" * 10
    assert json.loads(out.readline()) == {"sha256": hashlib.sha256(b"M" * 10).hexdigest(),
                                          "complete": True}
    assert out.read() == b""


def test_odd_names_round_trip_through_the_listing(tmp_path):
    odd = ["new\nline.txt", "quote's \"dq\" $x `y`.txt", "ü-ñ.txt", "tab\there.txt"]
    for name in odd:
        (tmp_path / name).write_text(name)
    (tmp_path / os.fsdecode(b"bad\xff.txt")).write_text("x")
    got = [x["path"] for x in lines(run_hostside("list", str(tmp_path), "*").stdout)]
    assert sorted(got) == sorted(odd + ["bad\udcff.txt"])


@pytest.mark.parametrize("name, why", [
    ("model.pt", None), ("ckpt/epoch 3 (final).pt", None), ("ü/ñ.txt", None), ("a..b", None), ("...", None),
    ("", "empty name"), ("/etc/passwd", "absolute path"), ("../x", "'..' path component"),
    ("a/../../x", "'..' path component"), ("a/./b", "'.' path component"), ("a//b", "empty path component"),
    ("a/", "empty path component"), ("a\0b", "NUL byte"), ("a\\..\\b", "backslash"), ("C:\\x", "backslash"),
    ("new\nline", "control character"), ("esc\x1b]0;title\x07", "control character"), ("del\x7f", "control character"),
    ("c1\x9b2J", "control character"), ("evil\u202egnp.exe", "bidirectional text control"),
    ("bad\udcff.txt", "not UTF-8"), ("x" * 256, "name too long"), ("d/" + "é" * 128, "name too long"),
])
def test_unsafe_names(name, why):
    assert unsafe_reason(name) == why


def f(host: str, path: str) -> RemoteFile:
    return RemoteFile(host, path, 1, "0" * 64)


def test_placement_keeps_hosts_apart_only_where_names_collide():
    listings = [HostListing("node1", (f("node1", "model.pt"), f("node1", "rank0.log"), f("node1", "a\nb")), (), ()),
                HostListing("node2", (f("node2", "rank1.log"), f("node2", "model.pt")), (), ())]
    placed, refused = place(listings)
    assert [(p.file.host, p.dest) for p in placed] == [
        ("node1", "node1/model.pt"), ("node2", "node2/model.pt"), ("node1", "rank0.log"), ("node2", "rank1.log")]
    assert refused == [("node1", "a\nb", "control character")]


def test_placement_refuses_what_would_still_collide():
    listings = [HostListing("node1", (f("node1", "x"), f("node1", "d")), (), ()),
                HostListing("node2", (f("node2", "x"), f("node2", "node1/x"), f("node2", "d/e")), (), ())]
    placed, refused = place(listings)
    assert [(p.file.host, p.dest) for p in placed] == [("node2", "d/e"), ("node2", "node2/x")]
    assert sorted(refused) == [
        ("node1", "d", "d would also be a folder of another output"),
        ("node1", "x", "node1/x would hold two hosts' files"),
        ("node2", "node1/x", "node1/x would hold two hosts' files")]


class Replay:
    """A host's `send` reply, fed back in small pieces as a channel would (pure logic, no host)."""

    def __init__(self, data: bytes, piece: int = 7):
        self.data, self.piece = data, piece

    def read(self) -> bytes:
        out, self.data = self.data[:self.piece], self.data[self.piece:]
        return out


def _frame(path: str, body: bytes, sha: str | None = None) -> bytes:
    trailer = {"sha256": sha or hashlib.sha256(body).hexdigest(), "complete": True}
    return (json.dumps({"path": path, "size": len(body)}).encode() + b"\n" + body
            + json.dumps(trailer).encode() + b"\n")


def test_receive_writes_whole_files_only(tmp_path):
    from orchestrator.results.outputs import _Reader, _receive

    good, bad = Placement(f("h", "a/b.txt"), "a/b.txt"), Placement(f("h", "c.txt"), "c.txt")
    reader = _Reader(Replay(_frame("a/b.txt", b"hello\n" * 1000) + _frame("c.txt", b"xyz", sha="0" * 64)))
    assert _receive(reader, tmp_path, good) == 6000
    with pytest.raises(OSError, match="changed on the host"):
        _receive(reader, tmp_path, bad)
    assert tree_of(tmp_path) == {"a/b.txt": b"hello\n" * 1000}


@pytest.mark.parametrize("reply", [
    b'{"path": "c.txt", "size": -5}\n',  # would never end
    b'{"path": "other.txt", "size": 1}\nx',  # not the file asked for
    b'{"path": "c.txt", "size": 10}\nshort',  # the channel closed mid-file
    b'{"path": "c.txt"' + b" " * (2 << 20),  # a header without an end
    b"[1, 2]\n",
])
def test_a_broken_or_hostile_reply_stops_the_host_and_leaves_nothing(tmp_path, reply):
    from orchestrator.results.outputs import _Reader, _receive

    with pytest.raises((EOFError, ValueError)):
        _receive(_Reader(Replay(reply, piece=65536)), tmp_path, Placement(f("h", "c.txt"), "c.txt"))
    assert tree_of(tmp_path) == {}


def tree_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- model.pt


def _checkpoints(*specs: tuple[Path, int, int]) -> None:
    """The trainer's own save_checkpoint writes them (one torch import for all)."""
    code = ("import json, sys, torch; sys.path.insert(0, sys.argv[1])\n"
            "from trainer import checkpoint\n"
            "from trainer.model import build_model\n"
            "m = build_model(0, 'cpu'); o = torch.optim.SGD(m.parameters(), lr=0.1)\n"
            "for d, epoch, step in json.loads(sys.argv[2]):\n"
            "    st = dict(epoch=epoch, step=step, model=m.state_dict(), optimizer=o.state_dict(),"
            " rng=checkpoint.capture_rng(), seed=1, world_size=2, batch_size=64, dataset='d', fingerprint='f',"
            " partial=[(1.5, 3), (2.5, 4)] if step else [])\n"
            "    checkpoint.save_checkpoint(d, st, 5)\n")
    repo = str(Path(__file__).resolve().parent.parent)
    subprocess.run([sys.executable, "-c", code, repo, json.dumps([(str(d), e, s) for d, e, s in specs])], check=True)


def test_describe_the_trainers_checkpoints_without_importing_torch(real_trainer, tmp_path):
    _checkpoints((tmp_path / "a", 3, 0), (tmp_path / "b", 3, 120))
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    paths = [str(tmp_path / "a" / "latest.pt"), str(tmp_path / "b" / "latest.pt"), str(tmp_path / "junk.pt")]
    code = ("import sys; from orchestrator.results.ckptinfo import describe_checkpoint as d\n"
            "print([d(p) for p in sys.argv[1:]]); print('torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == [
        "['epoch 3 (end of epoch)', 'epoch 4 step 120 (mid-epoch checkpoint of a stopped run)', None]", "False"]


def test_a_hostile_pickle_runs_nothing(tmp_path):
    import pickle
    import zipfile

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"epoch": 1, "step": 0, "x": Boom()}))
    from orchestrator.results.ckptinfo import describe_checkpoint

    assert describe_checkpoint(path) == "epoch 1 (end of epoch)"
    assert not (tmp_path / "pwned").exists()
