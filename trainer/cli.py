"""Entry point: flags -> placement -> one rank's run; failures -> one line and an exit code."""

from __future__ import annotations

import os
import signal
import sys
import traceback
from typing import TYPE_CHECKING, NoReturn

from trainer.config import parse_config
from trainer.errors import ExitCode, TrainerError
from trainer.log import emit_error
from trainer.process_group import first_line, resolve_placement

if TYPE_CHECKING:
    from collections.abc import Sequence

    from trainer.run import Run


def _describe(exc: Exception, run: Run | None) -> tuple[str, ExitCode]:
    """Message and exit code for an unexpected exception; torch's collective failures mean a
    lost peer, which a launcher should not mistake for the failure that caused it."""
    import torch.distributed as dist

    phase = run.phase if run else "startup"
    if isinstance(exc, dist.DistError) or "gloo" in str(exc).lower() or "nccl" in str(exc).lower():
        timeout = run.config.timeout if run else 0
        return (f"lost the other ranks during {phase} (a peer died, the network broke, or a "
                f"collective exceeded --timeout {timeout:g} s): {first_line(exc)}"), ExitCode.PEER_LOST
    return f"{type(exc).__name__} during {phase}: {first_line(exc)}", ExitCode.ERROR


def _exit(code: int) -> NoReturn:
    """Flush and leave at once: after a failed collective, torch's teardown can block or abort."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code))


def main(argv: Sequence[str] | None = None) -> NoReturn:
    config = parse_config(argv)
    rank = config.rank if config.rank is not None else os.environ.get("RANK", 0)
    run = None
    try:
        placement = resolve_placement(config, os.environ)
        rank = placement.rank
        from trainer.run import Run  # torch is imported only past argument checks

        run = Run(config, placement)
        code = run.main()
    except TrainerError as exc:
        if config.debug:
            traceback.print_exc()
        emit_error(rank, str(exc))
        _exit(exc.exit_code)
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (or a second one inside)
        emit_error(rank, "interrupted; no checkpoint written")
        sys.stdout.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)  # die by the signal, as shells and distctl expect
    except Exception as exc:
        if config.debug:
            traceback.print_exc()
        message, code = _describe(exc, run)
        emit_error(rank, message)
        _exit(code)
    _exit(code)
