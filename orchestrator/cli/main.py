"""The `distctl` command line. Errors become exit codes here, and only here."""

from __future__ import annotations

import os
import sys

import click

from orchestrator import __version__
from orchestrator.cli import commands
from orchestrator.errors import DistctlError, ExitCode
from orchestrator.ssh.group import DEFAULT_FANOUT
from orchestrator.console.ui import Ui

INVENTORY = click.argument("inventory", type=click.Path(dir_okay=False), default="inventory.yaml")
TARGET = click.argument("target", required=False)
SET = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                   help="Change an inventory value for this run, e.g. job.train.epochs=5 or "
                        "hosts.node2.slots=2 (repeatable; checked like the file).")


def _fanout(f):
    return click.option("--fanout", type=click.IntRange(1, 512), default=DEFAULT_FANOUT, show_default=True,
                        help="Hosts worked on at once.")(f)


class _Cli(click.Group):
    """Every error becomes one message and its documented exit code, here and only here."""

    def invoke(self, ctx: click.Context):
        debug = bool(ctx.obj and ctx.obj.get("debug")) or "--debug" in sys.argv[1:]

        def ui() -> Ui:  # the command's own: it knows the secrets to mask in the message
            return (ctx.obj or {}).get("ui") or Ui()

        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except DistctlError as exc:
            if debug:
                raise
            if exc.exit_code != ExitCode.DETACHED:
                ui().error(str(exc))
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("distctl: interrupted", err=True)
            ctx.exit(ExitCode.DETACHED)
        except BrokenPipeError:  # `distctl logs | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(ExitCode.OK)
        except Exception as exc:  # a bug of ours: one line, the traceback with --debug
            if debug:
                raise
            ui().error(f"internal error: {type(exc).__name__}: {exc} (run with --debug for details)")
            ctx.exit(ExitCode.INTERNAL)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="distctl")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors and rank output.")
@click.option("-v", "--verbose", is_flag=True, help="Say more about each step.")
@click.option("--no-color", is_flag=True, help="Plain output (also: NO_COLOR=1).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool, verbose: bool, no_color: bool) -> None:
    """Train on several SSH hosts with one command.

    \b
    Example:
      distctl up inventory.yaml        # push, launch every rank, stream logs
      distctl status                   # the last run started here
      distctl stop                     # stop it on every host
    """
    ctx.obj = {"ui": Ui(quiet=quiet, verbose=verbose, color=False if no_color else None), "debug": debug}


@cli.command()
@INVENTORY
@click.option("--dry-run", is_flag=True, help="Print every step and command; connect to nothing.")
@click.option("--detach", is_flag=True, help="Return once every rank runs.")
@click.option("--resume", is_flag=True, help="Restart the inventory's last run from its newest checkpoint.")
@click.option("--accept-new-host-keys", is_flag=True, help="Record unknown host keys (changed keys are refused).")
@SET
@_fanout
@click.pass_obj
def up(obj, inventory: str, dry_run: bool, detach: bool, resume: bool, accept_new_host_keys: bool,
       overrides: tuple[str, ...], fanout: int) -> None:
    """Push the trainer, start every rank, and stream their logs.

    \b
    Example:
      distctl up inventory.yaml
      distctl up inventory.yaml --dry-run
      distctl up inventory.yaml --detach && distctl logs -f
      distctl up inventory.yaml --set job.train.epochs=5 --dry-run
    """
    inv = commands.load(inventory, overrides)
    if dry_run:
        commands.dry_run(inv, obj["ui"], resume)
        return
    commands.up(inv, commands.Options(fanout, accept_new_host_keys), obj["ui"], detach, resume)


@cli.command()
@INVENTORY
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--accept-new-host-keys", is_flag=True, help="Record unknown host keys (changed keys are refused).")
@click.option("--show-plan", is_flag=True, help="Also print every command `up` would run.")
@click.option("--net", is_flag=True, help="Also measure each host's bandwidth and latency to rank 0's host.")
@click.option("--min-gbps", type=click.FloatRange(0), metavar="GB/S",
              help="With --net: the least bandwidth (GB/s) a host must reach [default: 0.1].")
@SET
@_fanout
@click.pass_obj
def check(obj, inventory: str, as_json: bool, accept_new_host_keys: bool, overrides: tuple[str, ...],
          show_plan: bool, net: bool, min_gbps: float | None, fanout: int) -> None:
    """Connect, discover and preflight without starting anything.

    Exits 0 only if `distctl up` would start. With --net, each host's link to rank 0's host
    is measured too; a host below half the others' median or below --min-gbps exits 5.

    \b
    Example:
      distctl check inventory.yaml
      distctl check inventory.yaml --net --min-gbps 1
    """
    commands.check(commands.load(inventory, overrides), commands.Options(fanout, accept_new_host_keys), obj["ui"],
                   as_json, show_plan, net, min_gbps)


@cli.command()
@TARGET
@click.option("-f", "--follow", is_flag=True, help="Keep following until the ranks exit.")
@click.option("--host", help="Only this host's ranks.")
@click.option("--rank", type=int, help="Only this rank.")
@click.option("--tail", type=click.IntRange(0), help="Only the last N lines of each log.")
@click.option("--grep", metavar="REGEX", help="Only lines matching this Python regex (matched on the hosts).")
@click.option("--collapse", is_flag=True, help="Lines several ranks print alike once, as [r0-7,9] LINE.")
@_fanout
@click.pass_obj
def logs(obj, target: str | None, follow: bool, host: str | None, rank: int | None, tail: int | None,
         grep: str | None, collapse: bool, fanout: int) -> None:
    """Replay (and follow) every rank's log from the hosts.

    TARGET is a run id or an inventory; default: the last run started here.

    \b
    Example:
      distctl logs -f
      distctl logs --host node2 --tail 20
      distctl logs --grep 'loss|error' --collapse
    """
    commands.logs(target, commands.Options(fanout), obj["ui"], follow, host, rank, tail, grep, collapse)


@cli.command()
@TARGET
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_fanout
@click.pass_obj
def status(obj, target: str | None, as_json: bool, fanout: int) -> None:
    """Show the run's start and elapsed time, and each rank's state (running, exited
    (code), or host unreachable) and last epoch; then the first failure, or where a stopped
    run was checkpointed. Exit 3 when a host could not be reached (the others are shown).

    \b
    Example:
      distctl status
      distctl status --json
    """
    commands.status(target, commands.Options(fanout), obj["ui"], as_json)


@cli.command()
@TARGET
@click.option("--host", help="Only this host's ranks.")
@click.option("--rank", type=int, help="Only this rank.")
@click.option("--native", is_flag=True, help="Also native frames, with py-spy where the host has it.")
@click.option("--samples", type=click.IntRange(1, 10000), default=1, show_default=True,
              help="Sample each rank's main thread this often and name the straggler (the rank the others wait for).")
@click.option("--every", type=click.FloatRange(0), default=0.1, show_default=True, help="Seconds between samples.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_fanout
@click.pass_obj
def stacks(obj, target: str | None, host: str | None, rank: int | None, native: bool, samples: int, every: float,
           as_json: bool, fanout: int) -> None:
    """Show the Python stacks of every rank (all threads, and their Python children), grouped.

    The first line names what most ranks do and the odd ones out, e.g. `ranks 0,2-7 wait in
    all_reduce (train.py:88); rank 1 on node2 is in load_batch (data.py:40)`. Ranks whose main
    threads have identical stacks are shown once. Each dump is saved in the run directory
    (`distctl pull` brings it back). Exit 12 when a rank could not be dumped (each is named).

    \b
    Example:
      distctl stacks
      distctl stacks --host node2 --native
      distctl stacks RUN_ID --json
      distctl stacks --samples 50      # who do the others wait for?
    """
    commands.stacks(target, commands.Options(fanout), obj["ui"], host, rank, native, as_json, samples, every)


@cli.command()
@TARGET
@click.option("--grace", type=click.FloatRange(0), default=30.0, show_default=True,
              help="Seconds between SIGTERM (ranks checkpoint) and SIGKILL.")
@_fanout
@click.pass_obj
def stop(obj, target: str | None, grace: float, fanout: int) -> None:
    """Stop every rank of a run on every host, and verify none is left.

    \b
    Example:
      distctl stop --grace 60
    """
    commands.stop(target, commands.Options(fanout), obj["ui"], grace)


@cli.command()
@TARGET
@click.option("--to", "dest", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Folder that gets runs/<run id>/.")
@_fanout
@click.pass_obj
def pull(obj, target: str | None, dest: str, fanout: int) -> None:
    """Bring the final checkpoint, rank logs, metrics and a plot back here.

    \b
    Example:
      distctl pull                     # into runs/<run id>/
      distctl pull --to /data/results  # into /data/results/runs/<run id>/
      python -c "import torch; print(torch.load('runs/<run id>/model.pt')['epoch'])"
    """
    commands.pull(target, commands.Options(fanout), obj["ui"], dest)


@cli.command()
@click.argument("inventory", type=click.Path(dir_okay=False), required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def runs(obj, inventory: str | None, as_json: bool) -> None:
    """List the runs distctl recorded (all, or INVENTORY's), newest last.

    Any run id listed works from any directory: `distctl status RUN_ID`.

    \b
    Example:
      distctl runs
      distctl runs inventory.yaml --json
    """
    commands.runs(inventory, obj["ui"], as_json)


@cli.command()
@click.argument("hosts", nargs=-1)
@click.option("--hostfile", type=click.Path(exists=True, dir_okay=False),
              help="A DeepSpeed/OpenMPI ('host slots=N [max_slots=M]') or MPICH ('host:N') hostfile.")
@click.option("--user", help="SSH user for every host (a host's user@ wins).")
@click.option("--port", type=click.IntRange(1, 65535), help="SSH port for every host.")
@click.option("--identity-file", help="SSH private key for every host.")
@click.option("--python", help="Interpreter with torch on the hosts (python3).")
@click.option("--workdir", help="Where code, data and runs live on the hosts (~/.distctl).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="inventory.yaml", show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.pass_obj
def init(obj, hosts: tuple[str, ...], hostfile: str | None, user: str | None, port: int | None,
         identity_file: str | None, python: str | None, workdir: str | None, output: str, force: bool) -> None:
    """Write a commented inventory from host names or a hostfile.

    HOSTS are [user@]host or [user@]host:SLOTS, in rank order.

    \b
    Example:
      distctl init gpu1:4 gpu2:4 --user ubuntu --identity-file ~/.ssh/id_ed25519
      distctl init --hostfile /job/hostfile --python /opt/venv/bin/python -o cluster.yaml
    """
    from orchestrator.inventory.init import Defaults

    commands.init(hosts, hostfile, Defaults(user, port, identity_file, python, workdir), output, force, obj["ui"])


@cli.command(name="exec")
@click.argument("inventory", type=click.Path(dir_okay=False))
@click.argument("command", nargs=-1, required=True)
@click.option("--host", "hosts", multiple=True, metavar="NAME", help="Only this host (repeatable).")
@click.option("--accept-new-host-keys", is_flag=True, help="Record unknown host keys (changed keys are refused).")
@_fanout
@click.pass_obj
def exec_(obj, inventory: str, command: tuple[str, ...], hosts: tuple[str, ...], accept_new_host_keys: bool,
          fanout: int) -> None:
    """Run a command on every host at once; output prefixed [host], then each host's exit code.

    Words after -- are quoted one by one (no shell evaluation; for pipes use sh -c '...').
    A leading `python` is the host's python. Exit 0 if every host exited 0, else 11
    (3, or 4 for a host key, when a host could not be reached; the others still run).

    \b
    Example:
      distctl exec inventory.yaml -- nvidia-smi -L
      distctl exec inventory.yaml --host node2 -- python -m pip list
      distctl exec inventory.yaml -- sh -c 'df -h ~ | tail -n 1'
    """
    commands.exec_command(commands.load(inventory), command, hosts,
                          commands.Options(fanout, accept_new_host_keys), obj["ui"])


def main() -> None:
    cli(prog_name="distctl")
