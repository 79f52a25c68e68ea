"""Exit codes and the trainer's exception family (torch-free).

Every expected failure is a :class:`TrainerError`; ``trainer.cli`` turns it into one
``error rank=R message="..."`` line on stderr and ``exit_code``.  Tracebacks only with --debug.
"""

import enum


class ExitCode(enum.IntEnum):
    """How ``python -m trainer`` ends; distctl relies on these values."""

    OK = 0
    ERROR = 1  # this rank's own failure: data missing, bad checkpoint, unexpected exception
    USAGE = 2  # bad arguments (argparse's own code)
    DIVERGED = 3  # training finished but the ranks' parameters differ
    PEER_LOST = 4  # a peer died, the network broke or a collective timed out: often a consequence
    STOPPED = 143  # SIGTERM/SIGINT: every rank stopped together, checkpoint written, resumable


class TrainerError(Exception):
    """An expected failure, reported as one line without a traceback."""

    exit_code = ExitCode.ERROR


class UsageError(TrainerError):
    """Placement or flags that cannot work together (also from torchrun's environment)."""

    exit_code = ExitCode.USAGE


class DataError(TrainerError):
    """The data set could not be read, downloaded or generated, or ranks disagree on it."""


class PeerError(TrainerError):
    """A collective failed: a peer died, the network broke, or --timeout passed."""

    exit_code = ExitCode.PEER_LOST


class CheckpointError(TrainerError):
    """A checkpoint could not be read, or does not fit this run."""


class DivergedError(TrainerError):
    """The ranks ended with different parameters."""

    exit_code = ExitCode.DIVERGED
