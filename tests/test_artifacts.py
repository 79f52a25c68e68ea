"""Packing a user's code folder (job.code): what goes in the tar, its digest, its summary."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from orchestrator.launch.artifacts import (CodeSummary, code_artifact, code_summary, format_bytes, format_summary,
                                   pack_folder, select_files, size_warning, summarize, write_tar)
from orchestrator.launch.artifacts import tar_of


def make(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        path.write_bytes(content)
    return root


def names(root: Path) -> list[str]:
    return [e.arcname for e in select_files(root).entries]


def members(tar: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        return {m.name: m for m in t.getmembers()}


def test_gitignore_patterns_and_negation(tmp_path):
    make(tmp_path, {".gitignore": "*.log\n!keep.log\n/top-only.txt\nbuild/\n!build/inside.txt\n",
                    "a.log": "x", "keep.log": "x", "train.py": "x", "top-only.txt": "x",
                    "sub/top-only.txt": "x", "sub/b.log": "x", "build/inside.txt": "x"})
    # build/ is ignored as a folder, so (as in git) nothing in it can be re-included
    assert names(tmp_path) == [".gitignore", "keep.log", "sub/top-only.txt", "train.py"]


def test_a_folder_ignored_by_its_contents_only_can_re_include_a_file(tmp_path):
    make(tmp_path, {".gitignore": "out/*\n!out/keep.txt\n", "out/keep.txt": "k", "out/drop.txt": "d"})
    assert names(tmp_path) == [".gitignore", "out/keep.txt"]


def test_nested_gitignore_files_apply_below_their_folder_and_win_over_shallower_ones(tmp_path):
    make(tmp_path, {".gitignore": "*.dat\n",
                    "sub/.gitignore": "*.txt\n!wanted.dat\n/anchored.py\n",
                    "a.txt": "x", "x.dat": "x", "sub/a.txt": "x", "sub/wanted.dat": "x", "sub/other.dat": "x",
                    "sub/anchored.py": "x", "sub/deeper/anchored.py": "x", "sub/deeper/c.txt": "x"})
    assert names(tmp_path) == [".gitignore", "a.txt", "sub/.gitignore", "sub/deeper/anchored.py",
                               "sub/wanted.dat"]


def test_distctlignore_excludes_and_can_re_include_what_git_ignores(tmp_path):
    make(tmp_path, {".gitignore": "*.bin\n", ".distctlignore": "data/\nnotes.md\n!vocab.bin\n",
                    "data/big.csv": "x", "notes.md": "x", "vocab.bin": "x", "weights.bin": "x", "run.py": "x",
                    "pkg/.distctlignore": "scratch/\n", "pkg/scratch/t.py": "x", "pkg/m.py": "x"})
    assert names(tmp_path) == [".distctlignore", ".gitignore", "pkg/.distctlignore", "pkg/m.py", "run.py",
                               "vocab.bin"]


def test_a_gitignored_huge_file_is_never_read_nor_packed(tmp_path):
    make(tmp_path, {".gitignore": "*.ckpt\ncache/\n", "train.py": "print(1)\n"})
    for path in (tmp_path / "huge.ckpt", tmp_path / "cache" / "blob"):
        path.parent.mkdir(exist_ok=True)
        with open(path, "wb") as f:
            f.truncate(64 * 1000**3)  # sparse: reading it would take minutes and 64 GB
    pack = pack_folder(str(tmp_path))
    assert sorted(members(pack.tar)) == [".gitignore", "train.py"]
    assert len(pack.tar) <= 10_240  # one tar record


def test_venvs_caches_vcs_and_distctl_state_are_always_left_out(tmp_path):
    make(tmp_path, {
        "train.py": "x", "cache.pyc": "x", "pkg/__pycache__/m.cpython-311.pyc": "x", "pkg/m.py": "x",
        ".git/config": "x", "sub/.git": "gitdir: ../.git/modules/sub\n", "sub/s.py": "x",
        ".venv/lib/site.py": "x", "venv/bin/python": "x", "env/pyvenv.cfg": "home = /usr\n",
        "env/lib/x.py": "x", "conda/conda-meta/history": "x", "conda/lib/y.py": "x",
        ".distctl/runs/r.json": "{}", "runs/r1/model.pt": "x", "pkg/runs/keep.py": "x",
    })
    assert names(tmp_path) == ["pkg/m.py", "pkg/runs/keep.py", "sub/s.py", "train.py"]


def test_same_content_same_digest_whatever_the_mtimes_owners_and_creation_order(tmp_path):
    files = {"train.py": "print('hi')\n", "pkg/a.py": "A = 1\n", "pkg/b/c.txt": "c" * 5000,
             ".gitignore": "*.tmp\n", "junk.tmp": "noise"}
    one = make(tmp_path / "one", files)
    two = make(tmp_path / "two", dict(reversed(list(files.items()))))
    (two / "junk.tmp").write_text("different ignored content")
    for i, path in enumerate(sorted(p for p in two.rglob("*") if p.is_file())):
        os.utime(path, (1_000_000 + i, 2_000_000 + i * 7))
        os.chown(path, 1234, 5678) if os.geteuid() == 0 else None
    a, b = code_artifact(one), code_artifact(two)
    assert a.digest == b.digest
    assert hashlib.sha256(tar_of(a)).hexdigest() == a.digest
    (two / "pkg" / "a.py").write_text("A = 2\n")
    pack_folder.cache_clear()
    assert code_artifact(two).digest != a.digest
    for m in members(tar_of(a)).values():
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")


def test_the_executable_bit_is_kept_and_other_mode_bits_are_not(tmp_path):
    make(tmp_path, {"run.sh": "#!/bin/sh\n", "data.txt": "x", "secret.txt": "x"})
    os.chmod(tmp_path / "run.sh", 0o700)
    os.chmod(tmp_path / "data.txt", 0o664)
    os.chmod(tmp_path / "secret.txt", 0o600)
    got = members(pack_folder(str(tmp_path)).tar)
    assert {n: m.mode for n, m in got.items()} == {"data.txt": 0o644, "run.sh": 0o755, "secret.txt": 0o644}


def test_symlinks_inside_are_kept_relative_and_ones_pointing_outside_are_left_out(tmp_path):
    root = make(tmp_path / "proj", {"conf/base.yaml": "a: 1\n", "train.py": "x"})
    (root / "cfg").symlink_to("conf")
    (root / "conf" / "abs.yaml").symlink_to(root / "conf" / "base.yaml")  # absolute, but inside
    (root / "passwd").symlink_to("/etc/passwd")
    (root / "up").symlink_to("../proj/../elsewhere")
    sel = select_files(root)
    assert {e.arcname: e.link for e in sel.entries} == {
        "cfg": "conf", "conf/abs.yaml": "base.yaml", "conf/base.yaml": None, "train.py": None}
    assert sel.skipped_links == ("passwd", "up")
    got = members(write_tar(sel.entries))
    assert got["cfg"].issym() and got["cfg"].linkname == "conf"
    assert format_summary(summarize(sel)) == (
        "pushing code: 4 files, 6 B (left out 2 symlinks pointing outside the folder: passwd, up)")


def test_a_fifo_is_skipped_not_read(tmp_path):
    make(tmp_path, {"a.py": "x"})
    os.mkfifo(tmp_path / "pipe")
    sel = select_files(tmp_path)
    assert [e.arcname for e in sel.entries] == ["a.py"] and sel.skipped_special == ("pipe",)


def test_summary_line_and_the_size_warning_naming_the_largest_entries(tmp_path):
    make(tmp_path, {"train.py": b"x" * 400_000, "data/a.bin": b"x" * 2_000_000, "data/b.bin": b"x" * 1_000_000,
                    "small.txt": b"x" * 10, "models/m.bin": b"x" * 5})
    s = code_summary(tmp_path)
    assert s == CodeSummary(5, 3_400_015, (("data/", 3_000_000), ("train.py", 400_000), ("small.txt", 10)), ())
    assert format_summary(s) == "pushing code: 5 files, 3.4 MB"
    assert size_warning(s) is None
    assert size_warning(s, threshold=1_000_000) == (
        "the code folder is 3.4 MB, over 1.0 MB; largest: data/ (3.0 MB), train.py (400.0 kB), small.txt (10 B). "
        "Add what the hosts don't need to .gitignore or .distctlignore")


@pytest.mark.parametrize("n, shown", [(0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (3_400_000, "3.4 MB"),
                                      (999_960, "1.0 MB"), (12 * 10**9, "12.0 GB")])
def test_format_bytes(n, shown):
    assert format_bytes(n) == shown


def test_one_file_summary_is_singular(tmp_path):
    make(tmp_path, {"a.py": "x"})
    assert format_summary(code_summary(tmp_path)) == "pushing code: 1 file, 1 B"


def test_the_packed_tree_extracts_to_the_selected_files(tmp_path):
    src = make(tmp_path / "src", {"train.py": "print(1)\n", "pkg/m.py": "M = 1\n", ".gitignore": "*.out\n",
                                  "x.out": "no"})
    (src / "link.py").symlink_to("pkg/m.py")
    out = tmp_path / "out"
    with tarfile.open(fileobj=io.BytesIO(tar_of(code_artifact(src)))) as t:
        t.extractall(out, filter="tar") if hasattr(tarfile, "data_filter") else t.extractall(out)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        ".gitignore", "link.py", "pkg", "pkg/m.py", "train.py"]
    assert (out / "link.py").read_text() == "M = 1\n" and (out / "link.py").is_symlink()
    shutil.rmtree(out)


def test_a_missing_folder_or_a_file_vanishing_is_one_clear_error(tmp_path, monkeypatch):
    from orchestrator.launch import artifacts
    from orchestrator.errors import DistctlError, ExitCode

    with pytest.raises(DistctlError, match=r"job.code: .*/nope is not a folder") as err:
        code_artifact(tmp_path / "nope")
    assert err.value.exit_code == ExitCode.BAD_INPUT
    make(tmp_path, {"a.py": "x", "b.py": "y"})
    real = artifacts.select_files

    def select_then_remove(root, walk_kind):
        sel = real(root, walk_kind)
        (tmp_path / "b.py").unlink()  # gone between the walk and the tar
        return sel

    monkeypatch.setattr(artifacts, "select_files", select_then_remove)
    with pytest.raises(DistctlError, match=r"job.code: cannot read .*/b.py: No such file or directory; fix it"):
        code_artifact(tmp_path)


def test_the_trainer_and_data_walk_sends_the_whole_tree_through_the_same_tar_writer(tmp_path):
    """A data folder is not a git checkout: its .gitignore does not apply, a symlinked file goes
    as its content, a symlinked folder is not entered; the tar is the code walk's writer."""
    from orchestrator.launch.artifacts import TREE, folder_artifact, tar_of

    make(tmp_path / "elsewhere", {"big.bin": "B" * 10})
    make(tmp_path / "data", {".gitignore": "*.bin\n", "train.bin": "T", "raw/x.idx": "X", "__pycache__/c.pyc": ""})
    (tmp_path / "data" / "linked.bin").symlink_to(tmp_path / "elsewhere" / "big.bin")
    (tmp_path / "data" / "linked_dir").symlink_to(tmp_path / "elsewhere")
    a = folder_artifact("data", tmp_path / "data", ".", TREE)
    with tarfile.open(fileobj=io.BytesIO(tar_of(a))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert sorted(members) == [".gitignore", "linked.bin", "raw/x.idx", "train.bin"]
        assert members["linked.bin"].isfile() and tar.extractfile("linked.bin").read() == b"B" * 10
    assert a.digest == hashlib.sha256(tar_of(a)).hexdigest()
