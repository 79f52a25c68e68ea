"""``python -m trainer`` without torch: the bundled trainer's line and exit-code contract.

It takes the trainer's flags (those distctl passes and the stop flags; the rest are accepted and
ignored), is placed the same way (torchrun's environment, else ``--init-method --rank
--world-size``, else a lone rank) and prints the same logfmt lines, in the same order, as
``trainer/__main__.py`` documents: rendezvous, joined, fallback, data, resume, one epoch line per
epoch, then ``done`` (exit 0) or ``stopped`` (exit 143), ``error`` on stderr otherwise (1: data
missing, 2: bad arguments, 4: a peer lost).

Instead of a model it keeps a digest: each epoch hashes it forward, so ranks agree, a run that
was stopped and resumed ends with the digest of an uninterrupted one, and a checkpoint that was
not restored shows. An epoch takes ``DISTCTL_STANDIN_EPOCH_S`` seconds (default 0.5). The ranks
are real processes joined by real sockets: rank 0 listens on MASTER_PORT (what distctl's port
wait sees), the others connect and say hello, and at every epoch's end each rank tells rank 0 whether it was
asked to stop and learns whether all stop (a collective: a dead peer ends the others with exit 4,
a SIGTERM or SIGINT to any rank stops every rank at the same epoch with a checkpoint).

Stdlib only, one file: it is pushed to the test hosts as the trainer package.
"""

import argparse
import hashlib
import json
import os
import signal
import socket
import sys
import time

OK, ERROR, USAGE, PEER_LOST, STOPPED = 0, 1, 2, 4, 143
RAW = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class Failed(Exception):
    """Ends the rank with ``error rank=R message=...`` and ``code``."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


def value(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    text = str(v).replace("\n", " | ")
    if text == "" or any(c in text for c in ' "=\\\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def line(event, **fields):
    pairs = [f"{k}={value(v)}" for k, v in fields.items()]
    return " ".join(pairs if event is None else [event] + pairs)


def emit(event, **fields):
    print(line(event, **fields), flush=True)


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m trainer")
    p.add_argument("--init-method")
    p.add_argument("--rank", type=int)
    p.add_argument("--world-size", type=int)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default="./data")
    p.add_argument("--dataset", choices=("mnist", "generated"), default="mnist")
    p.add_argument("--fallback", choices=("none", "generated"), default="none")
    p.add_argument("--download", action="store_true")
    p.add_argument("--checkpoint-dir")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--stop-after-epoch", type=int)
    p.add_argument("--backend", default="auto")
    p.add_argument("--timeout", type=float, default=300.0)
    for ignored in ("--batch-size", "--lr", "--threads", "--bucket-cap-mb", "--generated-train",
                    "--generated-test", "--keep-checkpoints", "--stop-check-steps", "--local-rank",
                    "--local-world-size"):
        p.add_argument(ignored)
    args = p.parse_args(argv)
    if args.resume and not args.checkpoint_dir:
        p.error("--resume needs --checkpoint-dir")
    return args


def placement(args):
    """(rank, world size, local rank, (address, port) of rank 0 or None)."""
    if args.init_method:
        host, _, port = args.init_method.rpartition("//")[2].rpartition(":")
        return args.rank, args.world_size, int(os.environ.get("LOCAL_RANK", "0")), (host, int(port))
    if "RANK" in os.environ:
        return (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")),
                (os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])))
    return 0, 1, 0, None


class Group:
    """Rank 0 holds a socket to every other rank; one collective: does any rank stop?"""

    def __init__(self, rank, world, master, timeout):
        self.rank, self.world, self.peers, self.timeout = rank, world, [], timeout
        if master is None:  # a lone rank, placed by nothing
            return
        deadline = time.monotonic() + timeout
        if rank == 0:  # it listens as long as it lives, as torch's store does (even for one rank)
            self.server = server = socket.create_server((master[0] if master[0] != "0.0.0.0" else "", master[1]))
            server.settimeout(timeout)
            while len(self.peers) < world - 1:
                conn, _ = server.accept()
                conn.settimeout(2.0)  # a rank says hello at once; distctl's port wait says nothing
                peer = conn.makefile("rw")
                try:
                    hello = peer.readline()
                except OSError:
                    hello = ""
                if hello.startswith("hello "):
                    conn.settimeout(timeout)
                    self.peers.append(peer)
                else:
                    conn.close()
            for peer in self.peers:
                self.send(peer, "go")
        else:
            while True:
                try:
                    conn = socket.create_connection(master, timeout=timeout)
                    break
                except OSError as e:
                    if time.monotonic() > deadline:
                        raise Failed(f"rendezvous with rank 0 at {master[0]}:{master[1]} failed: {e}", PEER_LOST) from e
                    time.sleep(0.1)
            self.peers = [conn.makefile("rw")]
            self.send(self.peers[0], f"hello {rank}")
            self.receive(self.peers[0])

    def send(self, peer, text):
        try:
            peer.write(text + "\n")
            peer.flush()
        except OSError as e:
            raise Failed(f"peer lost: {e}", PEER_LOST) from e

    def receive(self, peer):
        try:
            text = peer.readline()
        except OSError as e:
            raise Failed(f"peer lost: {e}", PEER_LOST) from e
        if not text:
            raise Failed("peer lost: connection closed", PEER_LOST)
        return text.strip()

    def any_stops(self, stop):
        """Every rank's stop flag, or-ed (rank 0 gathers and answers)."""
        if self.rank == 0:
            flags = [self.receive(peer) for peer in self.peers]
            stop = stop or "1" in flags
            for peer in self.peers:
                self.send(peer, "1" if stop else "0")
            return stop
        if self.peers:
            self.send(self.peers[0], "1" if stop else "0")
            return self.receive(self.peers[0]) == "1"
        return stop


def dataset(args, rank, local_rank):
    raw = os.path.join(args.data, "MNIST", "raw")
    if args.dataset == "mnist" and all(os.path.exists(os.path.join(raw, n)) for n in RAW):
        return "mnist"
    if args.dataset == "generated":
        return "generated"
    reason = f"MNIST not found in {raw}; pass --download to fetch it"
    if args.fallback != "generated":
        raise Failed(reason, ERROR)
    if local_rank == 0:
        emit("fallback", dataset="generated", reason=reason)
    return "generated"


def digest_after(digest, epoch):
    return hashlib.sha256(f"{digest} {epoch}".encode()).hexdigest()


def resume(args, rank, start):
    path = os.path.join(args.checkpoint_dir, "latest.pt")
    if not os.path.exists(path):
        emit("resume", rank=rank, checkpoint="none", epoch=0, step=0)
        return 0, start
    with open(path) as f:
        saved = json.load(f)
    emit("resume", rank=rank, checkpoint=os.path.realpath(path), epoch=saved["epoch"], step=0)
    return saved["epoch"], saved["digest"]


def checkpoint(args, local_rank, epoch, digest):
    if not args.checkpoint_dir:
        return "none"
    path = os.path.join(args.checkpoint_dir, f"ckpt-{epoch:06d}-000000.pt")
    if local_rank == 0:
        os.makedirs(args.checkpoint_dir, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump({"epoch": epoch, "digest": digest, "standin": True}, f)
        os.replace(path + ".tmp", path)
        latest = os.path.join(args.checkpoint_dir, "latest.pt")
        if os.path.lexists(latest):
            os.remove(latest)
        os.symlink(os.path.basename(path), latest)
    return path


def train(args, rank, world, local_rank, master):
    emit("rendezvous", rank=rank, world_size=world, backend="gloo")
    group = Group(rank, world, master, args.timeout)
    emit("joined", rank=rank, local_rank=local_rank, world_size=world, backend="gloo", device="cpu")
    asked = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: asked.append(signum))
    name = dataset(args, rank, local_rank)
    emit("data", rank=rank, dataset=name, train=2000, test=500, fingerprint="standin", threads=1, seconds=0.0)
    epoch, digest = 0, hashlib.sha256(b"seed %d" % args.seed).hexdigest()
    if args.resume:
        epoch, digest = resume(args, rank, digest)
    seconds = float(os.environ.get("DISTCTL_STANDIN_EPOCH_S", "0.5"))
    while epoch < args.epochs:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not asked:
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        epoch, digest = epoch + 1, digest_after(digest, epoch + 1)
        accuracy = 1.0 - 0.5 / (epoch + 1)
        fields = {"test_accuracy": accuracy} if rank == 0 else {}
        emit(None, epoch=epoch, rank=rank, loss=1.0 / (epoch + 1), samples_per_s=1000.0, **fields)
        stop = bool(asked) or epoch == args.stop_after_epoch
        if group.any_stops(stop) and epoch < args.epochs:
            path = checkpoint(args, local_rank, epoch, digest)
            emit("stopped", rank=rank, epoch=epoch, step=0, checkpoint=path, reason="SIGTERM")
            return STOPPED
    emit("done", rank=rank, param_sha256=digest, test_accuracy=1.0 - 0.5 / (epoch + 1))
    return OK


def main(argv):
    args = parse(argv)
    rank, world, local_rank, master = placement(args)
    try:
        return train(args, rank, world, local_rank, master)
    except Failed as e:
        sys.stdout.flush()
        print(line("error", rank=rank, message=str(e)), file=sys.stderr, flush=True)
        return e.code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
