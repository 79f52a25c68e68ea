"""What `up` pushes: folders as deterministic, content-addressed tars, and what they weigh.

Three artifacts, one walker and one tar writer: the job's code (`job.code`, or the bundled
trainer package as `trainer/`) and its data (`job.data`). An artifact's name on the host is
its tar's sha256, so a host that already has it is sent nothing; one tar stream over one
channel beats per-file SFTP (each `put` costs several round trips; see bench/bench_push.py).

A user's code folder (the "code" walk) leaves out what git would leave out:
  * files matched by the folder's `.gitignore` files, nested ones included (a deeper file's
    patterns win over a shallower one's, later lines over earlier ones, `!` re-includes), and by
    `.distctlignore` files (same syntax; in the same folder they come after `.gitignore`, so
    `!name` there sends a file git ignores). As in git, nothing inside an ignored folder can be
    re-included: the walk never enters it, so a giant ignored tree is never read or even listed;
  * always: `.git`, `__pycache__/`, `*.pyc`/`*.pyo`, virtual environments (`.venv/`, `venv/`,
    any folder holding `pyvenv.cfg` or `conda-meta/`), and at the top `.distctl/` and `runs/`
    (distctl's own run state and pulled outputs, when the code folder is where distctl runs);
  * symlinks that resolve outside the folder (counted in the summary: the host would get a
    dangling link or, worse, a path into its own file system), and sockets, fifos, devices.
A symlink that stays inside is stored as a relative link (one to a file left out dangles on
the host, as it would in a git clone). Empty folders are not stored (git does not keep them
either).

The trainer package and a data folder (the "tree" walk) are sent whole: no ignore files, only
`.git`, `__pycache__/`, `.pytest_cache/` and `*.pyc`/`*.pyo` left out; a symlinked file is sent
as the file it points to, and a symlinked folder is not entered.

Every tar is byte-identical for identical content (sorted names, zero times, no owners, only the
executable bit kept from the mode), so its sha256 names it on the hosts and an unchanged
folder is sent 0 bytes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import stat
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pathspec

from orchestrator.errors import DistctlError, ExitCode
from orchestrator.inventory.model import Job
from orchestrator.plan.model import Artifact

IGNORE_FILES = (".gitignore", ".distctlignore")
ALWAYS_SKIPPED_DIRS = frozenset({".git", "__pycache__", ".venv", "venv"})
TOP_SKIPPED_DIRS = frozenset({".distctl", "runs"})
VENV_MARKERS = ("pyvenv.cfg", "conda-meta")
TREE_SKIPPED_DIRS = frozenset({".git", "__pycache__", ".pytest_cache"})
CODE, TREE = "code", "tree"  # the two walks
WARN_BYTES = 100 * 1000 * 1000  # `up` warns above this and names the largest entries


@dataclass(frozen=True)
class Entry:
    """One member of the tar: a regular file, or a symlink that stays inside the folder."""

    arcname: str  # relative, '/'-separated
    path: str  # absolute on the workstation
    size: int  # 0 for a link
    executable: bool = False
    link: str | None = None  # relative target of a symlink


@dataclass(frozen=True)
class Selection:
    root: str
    entries: tuple[Entry, ...]
    skipped_links: tuple[str, ...]  # symlinks resolving outside the folder (arcnames)
    skipped_special: tuple[str, ...]  # sockets, fifos, devices


@dataclass(frozen=True)
class CodeSummary:
    files: int  # regular files and symlinks
    bytes: int  # sum of the regular files' sizes
    largest: tuple[tuple[str, int], ...]  # the 3 largest top-level entries ("dir/" or "file")
    skipped_links: tuple[str, ...]


# ----------------------------------------------------------------- selection


class _Rules:
    """The ignore files in force at one folder: (folder relative to root, spec), shallowest first."""

    def __init__(self, specs: tuple[tuple[str, pathspec.GitIgnoreSpec], ...] = ()):
        self.specs = specs

    def below(self, folder: Path, rel: str) -> _Rules:
        lines: list[str] = []
        for name in IGNORE_FILES:
            try:
                lines += (folder / name).read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                continue
        if not lines:
            return self
        return _Rules(self.specs + ((rel, pathspec.GitIgnoreSpec.from_lines(lines)),))

    def ignored(self, rel: str, is_dir: bool) -> bool:
        """git's answer for `rel`: the deepest ignore file with a matching line decides."""
        for base, spec in reversed(self.specs):
            sub = rel[len(base) + 1:] if base else rel
            result = spec.check_file(sub + "/" if is_dir else sub)
            if result.include is not None:
                return result.include
        return False


def _always_skipped_dir(path: Path, rel: str) -> bool:
    name = path.name
    if name in ALWAYS_SKIPPED_DIRS or ("/" not in rel and name in TOP_SKIPPED_DIRS):
        return True
    return any(os.path.lexists(path / marker) for marker in VENV_MARKERS)


def _inside_link(root_real: str, path: Path, rel: str) -> str | None:
    """A symlink's target relative to its own folder when it resolves inside the root, else None."""
    target = os.path.realpath(path)
    if target != root_real and not target.startswith(root_real + os.sep):
        return None
    parent = os.path.join(root_real, os.path.dirname(rel))
    return os.path.relpath(target, parent).replace(os.sep, "/")


def select_files(root: Path, walk_kind: str = CODE) -> Selection:
    """Walk `root` applying the rules of `walk_kind` (the module docstring); entries sorted by name."""
    root = Path(root)
    root_real = os.path.realpath(root)
    entries: list[Entry] = []
    skipped_links: list[str] = []
    skipped_special: list[str] = []

    code = walk_kind == CODE

    def walk(folder: Path, rel: str, rules: _Rules) -> None:
        if code:
            rules = rules.below(folder, rel)
        with os.scandir(folder) as it:
            children = sorted(it, key=lambda e: e.name)
        for child in children:
            crel = f"{rel}/{child.name}" if rel else child.name
            st = child.stat(follow_symlinks=False)
            is_dir = stat.S_ISDIR(st.st_mode)
            if child.name == ".git" or (code and rules.ignored(crel, is_dir)):
                continue
            if is_dir:
                if not (_always_skipped_dir(Path(child.path), crel) if code else child.name in TREE_SKIPPED_DIRS):
                    walk(Path(child.path), crel, rules)
            elif stat.S_ISLNK(st.st_mode) and not code:
                if os.path.isfile(child.path) and not child.name.endswith((".pyc", ".pyo")):  # sent as its target
                    pointed = os.stat(child.path)
                    entries.append(Entry(crel, child.path, pointed.st_size, bool(pointed.st_mode & 0o111)))
            elif stat.S_ISLNK(st.st_mode):
                target = _inside_link(root_real, Path(child.path), crel)
                if target is None:
                    skipped_links.append(crel)
                else:
                    entries.append(Entry(crel, child.path, 0, link=target))
            elif stat.S_ISREG(st.st_mode):
                if not child.name.endswith((".pyc", ".pyo")):
                    entries.append(Entry(crel, child.path, st.st_size, bool(st.st_mode & 0o111)))
            else:
                skipped_special.append(crel)

    walk(root, "", _Rules())
    entries.sort(key=lambda e: e.arcname)
    return Selection(str(root), tuple(entries), tuple(skipped_links), tuple(skipped_special))


# ----------------------------------------------------------------------- tar


def write_tar(entries: tuple[Entry, ...], prefix: str = ".") -> bytes:
    """A byte-identical tar for identical content: sorted, zero times, no owners."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.arcname if prefix == "." else f"{prefix}/{e.arcname}")
            if e.link is not None:
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, e.link, 0o777
                tar.addfile(info)
                continue
            info.mode = 0o755 if e.executable else 0o644
            with open(e.path, "rb") as f:
                # the size read now, not at the walk: a file growing meanwhile can't corrupt the tar
                info.size = os.fstat(f.fileno()).st_size
                tar.addfile(info, f)
    return buf.getvalue()


@dataclass(frozen=True)
class Pack:
    selection: Selection
    tar: bytes
    digest: str


@lru_cache(maxsize=8)
def pack_folder(root: str, prefix: str = ".", walk_kind: str = CODE) -> Pack:
    """The folder's selection and tar, built once per process (the push sends the same bytes)."""
    what = "job.code" if walk_kind == CODE else "job.data"
    if not os.path.isdir(root):
        raise DistctlError(f"{what}: {root} is not a folder", ExitCode.BAD_INPUT)
    try:
        selection = select_files(Path(root), walk_kind)
        tar = write_tar(selection.entries, prefix)
    except OSError as exc:  # unreadable, or removed while we packed (an editor's temp file)
        hint = "; fix it or list it in .distctlignore" if walk_kind == CODE else ""
        raise DistctlError(f"{what}: cannot read {exc.filename}: {exc.strerror or exc}{hint}",
                           ExitCode.BAD_INPUT) from None
    return Pack(selection, tar, hashlib.sha256(tar).hexdigest())


def folder_artifact(name: str, root: Path, prefix: str = ".", walk_kind: str = CODE) -> Artifact:
    """A folder as a content-addressed artifact; `tar_of` gives its bytes back."""
    pack = pack_folder(str(root), prefix, walk_kind)
    return Artifact(name, pack.digest, str(root), prefix, walk_kind)


def code_artifact(root: Path, name: str = "code") -> Artifact:
    """A user's code folder (job.code), walked as git would."""
    return folder_artifact(name, root)


def trainer_root() -> Path:
    """The installed `trainer` package's folder; found without importing it (no torch here)."""
    spec = importlib.util.find_spec("trainer")
    if spec is None or not spec.submodule_search_locations:
        raise DistctlError("the 'trainer' package is not installed next to distctl "
                           "(reinstall with: pip install .)", ExitCode.BAD_INPUT)
    return Path(list(spec.submodule_search_locations)[0])


def job_artifacts(job: Job) -> tuple[Artifact, ...]:
    """The code (job.code's contents, or the trainer package as `trainer/`), and job.data's."""
    out = [code_artifact(Path(job.code)) if job.code else folder_artifact("code", trainer_root(), "trainer", TREE)]
    if job.data:
        out.append(folder_artifact("data", Path(job.data), ".", TREE))
    return tuple(out)


def tar_of(a: Artifact) -> bytes:
    """The artifact's tar, exactly the bytes its digest names."""
    return pack_folder(a.local_path, a.prefix, a.walk).tar


# ------------------------------------------------------------------- summary


def summarize(selection: Selection, top: int = 3) -> CodeSummary:
    sizes: dict[str, int] = {}
    for e in selection.entries:
        head, sep, _ = e.arcname.partition("/")
        key = head + "/" if sep else head
        sizes[key] = sizes.get(key, 0) + e.size
    largest = sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return CodeSummary(len(selection.entries), sum(sizes.values()), tuple(largest), selection.skipped_links)


def code_summary(root: Path) -> CodeSummary:
    return summarize(pack_folder(str(root)).selection)


def format_bytes(n: int) -> str:
    """Decimal units, as `du --si` and download tools show them: 3.4 MB, 512 B."""
    if n < 1000:
        return f"{n} B"
    size = float(n)
    for unit in ("kB", "MB", "GB", "TB"):
        size /= 1000
        if size < 999.95 or unit == "TB":
            return f"{size:.1f} {unit}"
    raise AssertionError("unreachable")


def format_summary(s: CodeSummary) -> str:
    """`pushing code: 12 files, 3.4 MB` (+ the symlinks left out, if any)."""
    line = f"pushing code: {s.files} file{'s' if s.files != 1 else ''}, {format_bytes(s.bytes)}"
    if s.skipped_links:
        shown = ", ".join(s.skipped_links[:3]) + (", ..." if len(s.skipped_links) > 3 else "")
        line += (f" (left out {len(s.skipped_links)} symlink{'s' if len(s.skipped_links) != 1 else ''} "
                 f"pointing outside the folder: {shown})")
    return line


def size_warning(s: CodeSummary, threshold: int = WARN_BYTES) -> str | None:
    """A warning naming the largest entries when the code is over `threshold` bytes, else None."""
    if s.bytes <= threshold:
        return None
    largest = ", ".join(f"{name} ({format_bytes(size)})" for name, size in s.largest)
    return (f"the code folder is {format_bytes(s.bytes)}, over {format_bytes(threshold)}; largest: {largest}. "
            f"Add what the hosts don't need to .gitignore or .distctlignore")
