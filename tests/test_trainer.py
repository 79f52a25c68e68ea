"""The trainer as distctl runs it: real gloo ranks on CPU, one subprocess each, on loopback.

Every multi-rank test starts the ranks exactly as the seed's scripts were started (flags,
``--init-method tcp://127.0.0.1:PORT``) and asserts on what they print and leave behind:
exit codes, the logfmt contract lines, parameter digests, checkpoint files.  Waits are on
conditions with deadlines; the deadlines are generous because importing torch alone takes
seconds per process on a busy 2-core machine.
"""

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from e2e import wait_for
from idx import write_blob_mnist
from support.net import ephemeral_port
from trainer.data import generated_root
from trainer.generated import generate_digits, write_generated_mnist
from trainer.log import format_line, parse_line

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEADLINE_S = 150  # one whole multi-rank run, startup included
BASE = ("--epochs", "3", "--lr", "0.05", "--timeout", "60")


class Rank:
    """One ``python -m trainer`` process whose stdout/stderr lines are collected as they come."""

    def __init__(self, args, env=None, entry=("-m", "trainer")):
        self.proc = subprocess.Popen([sys.executable, *entry, *args], cwd=REPO, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env={**os.environ, **(env or {})})
        self.out, self.err, self._new = [], [], queue.Queue()
        self._pumps = [threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
                       for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for pump in self._pumps:
            pump.start()

    def _pump(self, stream, sink):
        for line in stream:
            sink.append(line.rstrip("\n"))
            self._new.put(line)
        self._new.put(None)

    def wait_line(self, prefix, deadline):
        """The first stdout line starting with ``prefix``, waiting until ``deadline``."""
        while time.monotonic() < deadline:
            found = [line for line in self.out if line.startswith(prefix)]
            if found:
                return found[0]
            if self.proc.poll() is not None and not any(p.is_alive() for p in self._pumps):
                break
            try:
                self._new.get(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
            except queue.Empty:
                pass
        raise AssertionError(f"no line starting with {prefix!r}; stdout={self.out} stderr={self.err}")

    def finish(self, deadline):
        """Exit code, once the process ended and all its output is read; kills it at the deadline."""
        try:
            code = self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"rank still running at the deadline; stdout={self.out} stderr={self.err}") from None
        for pump in self._pumps:
            pump.join(timeout=10)
        return code

    def fields(self, prefix):
        return [parse_line(line)[1] for line in self.out if line.startswith(prefix)]


def launch(world, *extra, data=None, per_rank=None, entry=None):
    """Start ``world`` ranks on loopback; ``per_rank(rank)`` adds flags for one rank, ``entry(rank)``
    replaces its ``-m trainer``."""
    port = ephemeral_port()
    ranks = []
    for rank in range(world):
        args = ["--init-method", f"tcp://127.0.0.1:{port}", "--rank", str(rank),
                "--world-size", str(world), *BASE, *extra]
        if data:
            args += ["--data", str(data)]
        args += per_rank(rank) if per_rank else []
        ranks.append(Rank(args, entry=(entry and entry(rank)) or ("-m", "trainer")))
    return ranks


def finish_all(ranks, timeout=DEADLINE_S):
    deadline = time.monotonic() + timeout
    return [r.finish(deadline) for r in ranks]


def digests(ranks):
    return [r.fields("done ")[0]["param_sha256"] for r in ranks]


def describe(ranks):
    return "\n".join(f"--- rank {i}\n" + "\n".join(r.out + r.err) for i, r in enumerate(ranks))


@pytest.fixture(scope="session")
def blob_data(tmp_path_factory, real_trainer):
    root = tmp_path_factory.mktemp("blobs")
    write_blob_mnist(root, n_train=2048, n_test=512)
    return root


@pytest.fixture(scope="session")
def baseline(blob_data, tmp_path_factory):
    """An uninterrupted 2-rank, 3-epoch run with checkpoints; other tests compare against it."""
    ckpt = tmp_path_factory.mktemp("baseline-ckpt")
    ranks = launch(2, "--checkpoint-dir", str(ckpt), data=blob_data)
    codes = finish_all(ranks)
    assert codes == [0, 0], describe(ranks)
    return ranks, ckpt


def test_two_ranks_join_learn_and_end_equal(baseline):
    ranks, ckpt = baseline
    for rank, r in enumerate(ranks):
        joined = r.fields("joined ")
        assert joined == [{"rank": str(rank), "local_rank": str(rank), "world_size": "2",
                           "backend": "gloo", "device": "cpu"}]
        epochs = r.fields("epoch=")
        assert [e["epoch"] for e in epochs] == ["1", "2", "3"]
        assert float(epochs[-1]["loss"]) < 0.5 * float(epochs[0]["loss"])
        assert all(float(e["samples_per_s"]) > 0 for e in epochs)
    rank0_epochs = ranks[0].fields("epoch=")
    assert float(rank0_epochs[-1]["test_accuracy"]) > 0.8  # chance is 0.1
    assert "test_accuracy" not in ranks[1].fields("epoch=")[0]
    a, b = digests(ranks)
    assert a == b and len(a) == 64
    assert sorted(os.listdir(ckpt)) == ["ckpt-000001-000000.pt", "ckpt-000002-000000.pt",
                                        "ckpt-000003-000000.pt", "latest.pt"]
    assert not any(r.err for r in ranks)


def test_stop_after_epoch_then_resume_is_exact(baseline, blob_data, tmp_path):
    first = launch(2, "--checkpoint-dir", str(tmp_path), "--stop-after-epoch", "1", data=blob_data)
    assert finish_all(first) == [143, 143], describe(first)
    for rank, r in enumerate(first):
        assert r.fields("stopped ") == [{"rank": str(rank), "epoch": "1", "step": "16",
                                         "checkpoint": str(tmp_path / "ckpt-000001-000000.pt"),
                                         "reason": "stop-after-epoch"}]
    second = launch(2, "--checkpoint-dir", str(tmp_path), "--resume", data=blob_data)
    assert finish_all(second) == [0, 0], describe(second)
    assert [e["epoch"] for e in second[0].fields("epoch=")] == ["2", "3"]
    assert digests(second) == digests(baseline[0])


def test_stop_mid_epoch_then_resume_is_exact(baseline, blob_data, tmp_path):
    # 16 steps per epoch; a stop requested after step 20 lands on the next check, epoch 2 step 8.
    first = launch(2, "--checkpoint-dir", str(tmp_path), "--stop-after-step", "20",
                   "--stop-check-steps", "8", data=blob_data)
    assert finish_all(first) == [143, 143], describe(first)
    assert first[1].fields("stopped ")[0]["checkpoint"] == str(tmp_path / "ckpt-000001-000008.pt")
    assert [(s["epoch"], s["step"]) for r in first for s in r.fields("stopped ")] == [("2", "8")] * 2
    second = launch(2, "--checkpoint-dir", str(tmp_path), "--resume", data=blob_data)
    assert finish_all(second) == [0, 0], describe(second)
    resumed = second[0].fields("resume ")[0]
    assert (resumed["epoch"], resumed["step"]) == ("1", "8")
    assert digests(second) == digests(baseline[0])
    # the loss of the interrupted epoch counts its first 8 steps too
    assert second[0].fields("epoch=")[0]["loss"][:5] == baseline[0][0].fields("epoch=")[1]["loss"][:5]


def test_sigterm_stops_every_rank_with_a_checkpoint(blob_data, tmp_path):
    ranks = launch(2, "--checkpoint-dir", str(tmp_path), "--epochs", "100000", data=blob_data)
    ranks[0].wait_line("epoch=1 ", time.monotonic() + DEADLINE_S)
    for r in ranks:
        r.proc.send_signal(signal.SIGTERM)
    assert finish_all(ranks, timeout=60) == [143, 143], describe(ranks)
    stops = [r.fields("stopped ")[0] for r in ranks]
    assert stops[0]["reason"] == "SIGTERM"
    assert stops[0]["checkpoint"] == stops[1]["checkpoint"] and os.path.exists(stops[0]["checkpoint"])
    assert os.path.samefile(stops[0]["checkpoint"], tmp_path / "latest.pt")
    resumed = launch(2, "--checkpoint-dir", str(tmp_path), "--resume",
                     "--epochs", str(int(stops[0]["epoch"]) + 1), data=blob_data)
    assert finish_all(resumed) == [0, 0], describe(resumed)
    assert len(set(digests(resumed))) == 1


# The trainer with a checkpoint that takes 3 s to write (a big model, a slow disk), saying when it starts.
SLOW_SAVE = ("-c", "import sys, time\n"
             "import trainer.checkpoint as c\n"
             "save = c.save_checkpoint\n"
             "def slow(*args):\n"
             "    print('test: saving', flush=True)\n"
             "    time.sleep(3)\n"
             "    return save(*args)\n"
             "c.save_checkpoint = slow\n"
             "from trainer.cli import main\n"
             "main(sys.argv[1:])\n")


def test_signals_and_deaths_while_the_ranks_already_stop_still_end_143(blob_data, tmp_path):
    # distctl stop signals each host on its own connection: rank 1's SIGTERM may come after the
    # ranks agreed to stop, while it waits for rank 0's checkpoint. It used to die by that signal
    # mid-barrier, and rank 0 then exited 4 ("lost the other ranks during stopping"). Rank 2 is
    # then SIGKILLed (its host's grace ran out): who was asked to stop, or knows the checkpoint
    # is written, still stopped.
    ranks = launch(3, "--checkpoint-dir", str(tmp_path), "--epochs", "100000", "--stop-check-steps", "1",
                   data=blob_data, entry=lambda rank: SLOW_SAVE if rank == 0 else None)
    ranks[0].wait_line("epoch=1 ", time.monotonic() + DEADLINE_S)
    ranks[0].proc.send_signal(signal.SIGTERM)
    # The first save is epoch 1's; the second is the stop's, after every rank agreed.
    wait_for(lambda: ranks[0].out.count("test: saving") == 2, 60, "rank 0 to write the stop's checkpoint")
    time.sleep(0.5)
    ranks[1].proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    ranks[2].proc.kill()
    assert finish_all(ranks, timeout=60) == [143, 143, -signal.SIGKILL], describe(ranks)
    stops = [r.fields("stopped ")[0] for r in ranks[:2]]
    assert [s["reason"] for s in stops] == ["SIGTERM", "another rank"]  # rank 1's signal came late
    assert all("a peer left while stopping" in s["note"] for s in stops), stops
    assert os.path.samefile(stops[1]["checkpoint"], tmp_path / "latest.pt")


def test_four_ranks_on_two_hosts_and_exact_mid_epoch_resume(blob_data, tmp_path):
    # With 4 ranks the all-reduce's summation order depends on DDP's buckets: exact resume
    # needs the same buckets before and after the stop (see trainer.model.wrap_ddp).
    hosts = [tmp_path / "host-a", tmp_path / "host-b"]
    for host in hosts:
        shutil.copytree(blob_data, host)

    def start(*extra):
        return launch(4, *extra, per_rank=lambda rank: ["--data", str(hosts[rank // 2]),
                                                        "--local-rank", str(rank % 2)])

    whole = start()
    assert finish_all(whole) == [0] * 4, describe(whole)
    assert [r.fields("joined ")[0]["local_rank"] for r in whole] == ["0", "1", "0", "1"]
    assert len(set(digests(whole))) == 1
    assert float(whole[0].fields("epoch=")[-1]["test_accuracy"]) > 0.8
    ckpt = str(tmp_path / "ckpt")
    stopped = start("--checkpoint-dir", ckpt, "--stop-after-step", "10", "--stop-check-steps", "4")
    assert finish_all(stopped) == [143] * 4, describe(stopped)
    assert stopped[3].fields("stopped ")[0]["step"] == "4"  # 8 steps per epoch: mid-epoch 2
    resumed = start("--checkpoint-dir", ckpt, "--resume")
    assert finish_all(resumed) == [0] * 4, describe(resumed)
    assert digests(resumed) == digests(whole)


def test_fallback_is_agreed_by_all_ranks(blob_data, tmp_path):
    # rank 0's host has MNIST, rank 1's has none: with --fallback generated both must switch.
    empty = tmp_path / "empty"
    ranks = launch(2, "--fallback", "generated", "--generated-train", "600", "--generated-test", "200",
                   "--epochs", "1",
                   per_rank=lambda rank: ["--data", str(blob_data if rank == 0 else empty),
                                          "--local-rank", "0"])
    assert finish_all(ranks) == [0, 0], describe(ranks)
    for r in ranks:
        fallback = r.fields("fallback ")
        assert len(fallback) == 1 and "MNIST not found" in fallback[0]["reason"]
        assert r.fields("data ")[0]["dataset"] == "generated"
    assert len(set(digests(ranks))) == 1
    assert os.path.exists(os.path.join(generated_root(empty, 0, 600, 200), "MNIST", "raw", "t10k-labels-idx1-ubyte"))


def _torchvision_download_error(*causes):
    """The error torchvision's MNIST.download raises: every mirror it tried, each with its error."""
    mirrors = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
    return RuntimeError("Error downloading train-images-idx3-ubyte.gz:\n"
                        + "".join(f"Tried {m}, got:\n{c}\n" for m, c in zip(mirrors, causes)))


def test_a_failed_download_gives_its_last_cause_in_one_short_line(tmp_path, monkeypatch):
    """The fallback notice carries this reason: not urllib's error once per mirror."""
    import socket
    import types
    import urllib.error

    from trainer.data import read_mnist
    from trainer.errors import DataError

    def mnist(root, train=True, download=False):
        refused = urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
        no_dns = urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))
        raise _torchvision_download_error(refused, no_dns)

    monkeypatch.setitem(sys.modules, "torchvision", types.SimpleNamespace(datasets=types.SimpleNamespace(MNIST=mnist)))
    with pytest.raises(DataError) as caught:
        read_mnist(str(tmp_path), True, 5)
    assert str(caught.value) == (f"could not download MNIST into {tmp_path}: "
                                 "[Errno -3] Temporary failure in name resolution")


@pytest.mark.parametrize("error, expected", [
    (OSError(28, "No space left on device"), "[Errno 28] No space left on device"),
    (RuntimeError("x" * 300), "x" * 157 + "..."),
    (RuntimeError(""), "RuntimeError"),
])
def test_an_error_is_condensed_to_one_short_line(error, expected):
    from trainer.data import _condense

    assert _condense(error) == expected


def test_a_chained_error_is_condensed_to_its_innermost_cause():
    from trainer.data import _condense

    try:
        try:
            raise OSError(5, "Input/output error")
        except OSError as exc:
            raise RuntimeError("could not read\nthe file") from exc
    except RuntimeError as exc:
        assert _condense(exc) == "[Errno 5] Input/output error"


def test_dead_peer_ends_the_survivor_within_timeout(blob_data):
    ranks = launch(2, "--epochs", "100000", "--timeout", "10", data=blob_data)
    ranks[0].wait_line("epoch=1 ", time.monotonic() + DEADLINE_S)
    ranks[1].proc.kill()
    killed = time.monotonic()
    code = ranks[0].finish(killed + 10 + 15)
    assert code == 4, describe(ranks)  # ExitCode.PEER_LOST
    assert time.monotonic() - killed < 10 + 15
    assert len(ranks[0].err) == 1 and ranks[0].err[0].startswith("error rank=0 message="), describe(ranks)


def test_replicas_that_diverge_exit_3(blob_data):
    # Different learning rates: the all-reduced gradients are equal but the steps are not.
    ranks = launch(2, "--epochs", "1", data=blob_data, per_rank=lambda rank: ["--lr", str(0.05 * (rank + 1))])
    assert finish_all(ranks) == [3, 3], describe(ranks)
    assert any("replicas diverged" in line for line in ranks[0].err)


def test_missing_data_is_one_clear_line(real_trainer, tmp_path):
    rank = Rank(["--data", str(tmp_path / "nothing"), "--epochs", "1"])  # a lone rank, no flags
    assert rank.finish(time.monotonic() + DEADLINE_S) == 1
    assert len(rank.err) == 1, rank.err
    event, fields = parse_line(rank.err[0])
    assert event == "error" and fields["rank"] == "0"
    assert "MNIST not found" in fields["message"] and "--download" in fields["message"]
    assert "job.data" in fields["message"]


def test_bad_arguments_exit_2():
    rank = Rank(["--init-method", "tcp://127.0.0.1:1", "--rank", "2", "--world-size", "2"])
    assert rank.finish(time.monotonic() + 60) == 2


def test_generated_digits_are_byte_identical_per_seed(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_generated_mnist(a, seed=7, n_train=300, n_test=100)
    write_generated_mnist(b, seed=7, n_train=300, n_test=100)
    write_generated_mnist(c, seed=8, n_train=300, n_test=100)
    raw = os.path.join("MNIST", "raw")
    for name in sorted(os.listdir(a / raw)):
        assert (a / raw / name).read_bytes() == (b / raw / name).read_bytes(), name
    assert (a / raw / "train-images-idx3-ubyte").read_bytes() != (c / raw / "train-images-idx3-ubyte").read_bytes()
    images, labels = generate_digits(300, seed=7, split=0)
    assert sorted(set(labels.tolist())) == list(range(10))
    assert 20 < images.mean() < 90 and images.max() == 255  # ink on a dark page, like MNIST


def test_logfmt_round_trip():
    line = format_line("fallback", dataset="generated", reason='MNIST "x" not found; a=b')
    assert parse_line(line) == ("fallback", {"dataset": "generated", "reason": 'MNIST "x" not found; a=b'})
    assert parse_line(format_line(None, epoch=1, loss=0.5)) == (None, {"epoch": "1", "loss": "0.5"})
