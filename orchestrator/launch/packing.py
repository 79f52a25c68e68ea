"""Content-addressed artifacts: the trainer package and the data, as deterministic tars.

An artifact's name on the host is its digest, so a host that already has it is
sent nothing. One tar stream over one channel beats per-file SFTP (each `put`
costs several round trips; see bench/bench_push.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import tarfile
from functools import lru_cache
from pathlib import Path

from orchestrator.launch.codepack import code_artifact, packed_tar
from orchestrator.errors import DistctlError, ExitCode
from orchestrator.inventory.model import Job
from orchestrator.plan.model import Artifact

_SKIP_DIRS = {"__pycache__", ".git", ".pytest_cache"}


def trainer_root() -> Path:
    """The installed `trainer` package's folder; found without importing it (no torch here)."""
    spec = importlib.util.find_spec("trainer")
    if spec is None or not spec.submodule_search_locations:
        raise DistctlError("the 'trainer' package is not installed next to distctl "
                           "(reinstall with: pip install .)", ExitCode.BAD_INPUT)
    return Path(list(spec.submodule_search_locations)[0])


def _files(root: Path, prefix: str) -> list[tuple[str, Path]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith((".pyc", ".pyo")):
                continue
            path = Path(dirpath, name)
            out.append((str(Path(prefix, path.relative_to(root))), path))
    return out


@lru_cache(maxsize=8)
def build_tar(root: str, prefix: str) -> bytes:
    """A byte-identical tar for identical content: sorted, zero times, no owners."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for arcname, path in _files(Path(root), prefix):
            info = tarfile.TarInfo(arcname)
            info.size = path.stat().st_size
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            with open(path, "rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


def artifact(name: str, root: Path, prefix: str) -> Artifact:
    digest = hashlib.sha256(build_tar(str(root), prefix)).hexdigest()
    return Artifact(name, digest, str(root), prefix)


def job_artifacts(job: Job) -> tuple[Artifact, ...]:
    """The code (job.code's contents, or the trainer package as `trainer/`), and job.data's."""
    out = [code_artifact(Path(job.code)) if job.code else artifact("code", trainer_root(), "trainer")]
    if job.data:
        out.append(artifact("data", Path(job.data), "."))
    return tuple(out)


def tar_of(a: Artifact) -> bytes:
    packed = packed_tar(a)  # a user's code folder (job.code)
    if packed is not None:
        return packed
    return build_tar(a.local_path, a.prefix)
