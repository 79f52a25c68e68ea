"""What `check` (and `up`, before anything starts) can tell about a user's program from the
workstation alone: that the script job.command runs is among the files job.code pushes, and,
from the hosts' facts, that torch is not missing on one host while the others have it."""

from __future__ import annotations

import difflib
from pathlib import Path

from orchestrator.errors import DistctlError, ExitCode, HostError
from orchestrator.plan.facts import HostFacts
from orchestrator.inventory.model import Inventory

PYTHONS = ("python", "python3")


def script_of(command: tuple[str, ...]) -> str | None:
    """The script a `python [OPTIONS] SCRIPT ...` command runs, relative to the code folder; None
    for `python -m module`, `python -c ...`, an absolute path, or another program."""
    if not command or Path(command[0]).name not in PYTHONS and not command[0].endswith(("/python", "/python3")):
        return None
    for word in command[1:]:
        if word in ("-m", "-c") or word.startswith(("-m", "-c")):
            return None
        if word.startswith("-"):
            continue  # -u, -O, -X dev ... (an option's own value would be read as the script: rare)
        return None if word.startswith(("/", "~", "$")) else word
    return None


def check_script(inv: Inventory) -> None:
    """job.command's script must be pushed with job.code, or every rank fails at once."""
    script = script_of(inv.job.command)
    if not inv.job.code or script is None or inv.job.setup:  # setup may make it: not sure, not judged
        return
    from orchestrator.launch.artifacts import select_files

    pushed = {e.arcname for e in select_files(Path(inv.job.code)).entries}
    name = str(Path(script)).removeprefix("./")
    if name in pushed:
        return
    close = difflib.get_close_matches(name, sorted(pushed), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    why = ("it is there but ignored (.gitignore/.distctlignore)" if (Path(inv.job.code) / name).is_file()
           else f"no such file in {inv.job.code}")
    raise DistctlError(f"job.command runs {script}, which job.code does not push: {why}{hint}", ExitCode.PREFLIGHT)


def torch_missing(inv: Inventory, facts: dict[str, HostFacts]) -> list[HostError]:
    """A user program on hosts where some have torch and some do not: those without will fail."""
    have = sorted({f.torch for h in inv.hosts if (f := facts[h.name]).torch})
    if inv.job.is_trainer or not have:
        return []
    return [HostError(h.name, f"torch is not installed for {h.python} (python {facts[h.name].python}), but the "
                      f"other hosts have torch {', '.join(have)}; install it there (or use job.setup)",
                      ExitCode.PREFLIGHT)
            for h in inv.hosts if facts[h.name].python and not facts[h.name].torch]
