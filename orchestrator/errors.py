"""One exception root, and the exit codes errors become (in one place: cli.main)."""

from __future__ import annotations

from orchestrator.contract import ExitCode

__all__ = ["ExitCode", "DistctlError", "InventoryError", "HostError", "HostKeyError", "PortTakenError",
           "RemoteCommandError", "GroupError", "remote_cause"]


class DistctlError(Exception):
    """Root of every error distctl reports; `str()` is the one-line message."""

    exit_code = ExitCode.RUN_FAILED

    def __init__(self, message: str, exit_code: ExitCode | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class Detached(DistctlError):
    """Ctrl-C: distctl lets go (`up` or `logs -f` while attached: the run goes on; `up` while
    starting: what had started was stopped). The command has said which already; the CLI exits
    DETACHED (130) with no error line."""

    exit_code = ExitCode.DETACHED


class InventoryError(DistctlError):
    exit_code = ExitCode.BAD_INPUT


class HostError(DistctlError):
    """Something went wrong on one host; carries the host's name and cause."""

    exit_code = ExitCode.UNREACHABLE

    def __init__(self, host: str, cause: str, exit_code: ExitCode | None = None):
        super().__init__(f"{host}: {cause}", exit_code)
        self.host = host
        self.cause = cause


class HostKeyError(HostError):
    exit_code = ExitCode.HOST_KEY


class PortTakenError(HostError):
    """The rendezvous port is not free on rank 0's host (an earlier run may hold it)."""

    exit_code = ExitCode.PREFLIGHT


class RemoteCommandError(HostError):
    """A remote command exited non-zero (like Invoke's UnexpectedExit)."""

    exit_code = ExitCode.PREFLIGHT

    def __init__(self, host: str, what: str, exit_status: int, stderr: str, exit_code: ExitCode | None = None):
        super().__init__(host, f"{what} failed (exit {exit_status}): {remote_cause(stderr)}".rstrip(": "),
                         exit_code)
        self.exit_status = exit_status
        self.stderr = stderr


# What the OS said, as tools print it: the line that names one of these is the cause; a
# trailer like tar's "Exiting with failure status due to previous errors" is not.
_CAUSES = ("No space left on device", "Disk quota exceeded", "Read-only file system", "Permission denied",
           "No such file or directory", "Cannot allocate memory", "Too many open files")


def remote_cause(stderr: str) -> str:
    """The stderr line that says why a remote command failed: the first naming an OS error,
    else the first line."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    return next((line for line in lines if any(c in line for c in _CAUSES)), lines[0] if lines else "")


class GroupError(DistctlError):
    """Several hosts failed one step; reported together, worst exit code wins."""

    def __init__(self, step: str, errors: list[HostError]):
        # Hosts that failed alike (the same setup error on every host) are named once, together.
        alike: dict[str, list[str]] = {}
        for e in errors:
            alike.setdefault(e.cause, []).append(e.host)
        lines = [f"{step} failed on {len(errors)} host(s):"] + [f"  {', '.join(hosts)}: {cause}"
                                                               for cause, hosts in alike.items()]
        super().__init__("\n".join(lines), max(e.exit_code for e in errors))
        self.errors = errors
