"""The `distctl` command line. Errors become exit codes here, and only here."""

from __future__ import annotations

import os
import sys

import click

from orchestrator import __version__
from orchestrator.cli import commands
from orchestrator.errors import Detached, DistctlError, ExitCode
from orchestrator.ssh.group import DEFAULT_FANOUT
from orchestrator.console.ui import Ui

INVENTORY = click.argument("inventory", type=click.Path(dir_okay=False), default="inventory.yaml")
TARGET = click.argument("target", required=False)
SET = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                   help="Change an inventory value for this run, e.g. job.train.epochs=5 or "
                        "hosts.node2.slots=2 (repeatable; checked like the file).")

FULL = click.option("--full", is_flag=True,
                    help="With the plan: every command byte for byte, host-side programs' source included "
                         "(by default those are named by size and digest, and steps alike on several hosts "
                         "shown once with a table of each host's values).")

STRAGGLER_WATCH = click.option("--straggler-watch/--no-straggler-watch", default=True, show_default=True,
                               help="While following: sample every rank's stack every few seconds and say "
                                    "when a rank becomes (or stops being) the one the others wait for.")


def _hosts_chosen(f):
    f = click.option("--exclude", multiple=True, metavar="NAME[,NAME]",
                     help="Leave this host out (repeatable, comma lists; like pdsh -x).")(f)
    return click.option("--only", multiple=True, metavar="NAME[,NAME]",
                        help="Only this host (repeatable, comma lists; like pdsh -w).")(f)


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
        except Detached:
            if debug:
                raise
            ctx.exit(ExitCode.DETACHED)
        except DistctlError as exc:
            if debug:
                raise
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
@click.argument("args", nargs=-1)
@click.option("--dry-run", is_flag=True, help="Print every step and command; connect to nothing.")
@FULL
@click.option("--detach", is_flag=True, help="Return once every rank runs.")
@click.option("--resume", is_flag=True, help="Restart the inventory's last run (its own job) from its newest "
                                             "checkpoint.")
@click.option("--accept-new-host-keys", is_flag=True, help="Record unknown host keys (changed keys are refused).")
@click.option("--web", is_flag=True, help="Also serve the live view in the browser (see distctl web).")
@SET
@_hosts_chosen
@click.option("--host", "show_host", help="Show only this host's rank lines (the run is not changed).")
@click.option("--rank", "show_rank", type=int, help="Show only this rank's lines (the run is not changed).")
@STRAGGLER_WATCH
@_fanout
@click.pass_obj
def up(obj, inventory: str, args: tuple[str, ...], dry_run: bool, full: bool, detach: bool, resume: bool,
       accept_new_host_keys: bool, web: bool, overrides: tuple[str, ...], only: tuple[str, ...],
       exclude: tuple[str, ...], show_host: str | None, show_rank: int | None, straggler_watch: bool,
       fanout: int) -> None:
    """Push the trainer, start every rank, and stream their logs.

    Words after -- are appended to job.command (or to the bundled trainer's arguments) and
    recorded with the run, as are --set, --only and --exclude: --resume runs the same job.

    \b
    Example:
      distctl up inventory.yaml
      distctl up inventory.yaml --dry-run
      distctl up inventory.yaml --dry-run --full   # every command byte for byte
      distctl up inventory.yaml --detach && distctl logs -f
      distctl up inventory.yaml --set job.train.epochs=5 --dry-run
      distctl up inventory.yaml --web
      distctl up inventory.yaml --exclude gpu3 -- --epochs 3
      distctl up inventory.yaml --rank 0              # all ranks run; rank 0's lines are shown
    """
    inv = commands.load_job(inventory, overrides, args, only, exclude, resume, obj["ui"])
    obj["ui"].filter_ranks(show_host, show_rank)
    if dry_run:
        commands.dry_run(inv, obj["ui"], resume, full)
        return
    opts = commands.Options(fanout, accept_new_host_keys, straggler_watch)
    if not web:
        commands.up(inv, opts, obj["ui"], detach, resume)
        return
    from orchestrator.web.command import UpWeb, WebOptions

    view = UpWeb(WebOptions(fanout=fanout), obj["ui"])  # says what to install before anything starts
    try:
        commands.up(inv, opts, obj["ui"], detach, resume, view.launched)
        if detach:
            view.serve_detached()
    finally:
        view.close()


@cli.command()
@INVENTORY
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--accept-new-host-keys", is_flag=True, help="Record unknown host keys (changed keys are refused).")
@click.option("--show-plan", is_flag=True, help="Also print every command `up` would run.")
@FULL
@click.option("--net", is_flag=True, help="Also measure each host's bandwidth and latency to rank 0's host.")
@click.option("--min-gbps", type=click.FloatRange(0), metavar="GB/S",
              help="With --net: the least bandwidth (GB/s) a host must reach [default: 0.1].")
@click.option("--collective", is_flag=True,
              help="With --net (implied): also time an all_reduce over every host (needs torch on the hosts).")
@SET
@_hosts_chosen
@_fanout
@click.pass_obj
def check(obj, inventory: str, as_json: bool, accept_new_host_keys: bool, overrides: tuple[str, ...],
          only: tuple[str, ...], exclude: tuple[str, ...], show_plan: bool, full: bool, net: bool,
          min_gbps: float | None, collective: bool, fanout: int) -> None:
    """Connect, discover and preflight without starting anything.

    Exits 0 only if `distctl up` would start. With --net, each host's link to rank 0's host
    is measured too; a host below half the others' median or below --min-gbps exits 5.
    --collective then times an all_reduce over every host, one rank each (gloo, or NCCL where
    every host has a GPU) and prints its bus bandwidth; a failure names the host and exits 5.

    \b
    Example:
      distctl check inventory.yaml
      distctl check inventory.yaml --net --min-gbps 1
      distctl check inventory.yaml --net --collective
    """
    inv = commands.load_job(inventory, overrides, (), only, exclude)
    commands.check(inv, commands.Options(fanout, accept_new_host_keys), obj["ui"], as_json, show_plan, full, net,
                   min_gbps, collective)


@cli.command()
@TARGET
@click.option("-f", "--follow", is_flag=True, help="Keep following until the ranks exit.")
@click.option("--host", help="Only this host's ranks.")
@click.option("--rank", type=int, help="Only this rank.")
@click.option("--tail", type=click.IntRange(0), help="Only the last N lines of each log.")
@click.option("--grep", metavar="REGEX", help="Only lines matching this Python regex (matched on the hosts).")
@click.option("--collapse", is_flag=True, help="Lines several ranks print alike once, as [r0-7,9] LINE.")
@STRAGGLER_WATCH
@_fanout
@click.pass_obj
def logs(obj, target: str | None, follow: bool, host: str | None, rank: int | None, tail: int | None,
         grep: str | None, collapse: bool, straggler_watch: bool, fanout: int) -> None:
    """Replay (and follow) every rank's log from the hosts.

    TARGET is a run id or an inventory; default: the last run started here.

    \b
    Example:
      distctl logs -f
      distctl logs --host node2 --tail 20
      distctl logs --grep 'loss|error' --collapse
    """
    commands.logs(target, commands.Options(fanout, straggler_watch=straggler_watch), obj["ui"], follow, host, rank,
                  tail, grep, collapse)


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
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Port on 127.0.0.1 (default: a free one).")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the default browser.")
@click.option("--grace", type=click.FloatRange(0), default=30.0, show_default=True,
              help="The Stop button's seconds between SIGTERM and SIGKILL, as for distctl stop.")
@click.option("--pulled", type=click.Path(file_okay=False), metavar="DIR",
              help="Where distctl pull --to wrote runs/<run id>/, for a run whose hosts are gone.")
@_fanout
@click.pass_obj
def web(obj, target: str | None, port: int, open_browser: bool, grace: float, pulled: str | None,
        fanout: int) -> None:
    """Serve a live view of a run in the browser: curves of every rank, hosts, failures, Stop.

    Listens on 127.0.0.1 only and prints the URL with its secret token; from another machine,
    forward the port: ssh -L 8800:127.0.0.1:8800 workstation (then distctl web --port 8800).
    Needs the web extra: pip install 'distctl[web]'.

    \b
    Example:
      distctl web                      # the last run started here
      distctl web mnist-20260101-120000-ab12 --open
    """
    from orchestrator.web.command import WebOptions, web as serve_web

    serve_web(target, WebOptions(port, open_browser, grace, fanout, pulled), obj["ui"])


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
@click.option("--code", type=click.Path(file_okay=False), help="Your program's folder (job.code).")
@click.option("--command", help="How each rank starts it, e.g. 'python train.py' (job.command).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="inventory.yaml", show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.pass_obj
def init(obj, hosts: tuple[str, ...], hostfile: str | None, user: str | None, port: int | None,
         identity_file: str | None, python: str | None, workdir: str | None, code: str | None,
         command: str | None, output: str, force: bool) -> None:
    """Write a commented inventory from host names or a hostfile.

    HOSTS are [user@]host or [user@]host:SLOTS, in rank order.

    \b
    Example:
      distctl init gpu1:4 gpu2:4 --user ubuntu --identity-file ~/.ssh/id_ed25519
      distctl init --hostfile /job/hostfile --python /opt/venv/bin/python -o cluster.yaml
      distctl init gpu1:2 gpu2:2 --code . --command 'python train.py --epochs 3'
    """
    from orchestrator.inventory.init import Defaults

    commands.init(hosts, hostfile, Defaults(user, port, identity_file, python, workdir, code, command), output,
                  force, obj["ui"])


@cli.command(name="exec")
@click.argument("inventory", type=click.Path(dir_okay=False))
@click.argument("command", nargs=-1, required=True)
@click.option("--only", "--host", "hosts", multiple=True, metavar="NAME[,NAME]",
              help="Only this host (repeatable, comma lists; like pdsh -w).")
@click.option("--exclude", multiple=True, metavar="NAME[,NAME]",
              help="Leave this host out (repeatable, comma lists; like pdsh -x).")
@click.option("-c", "--group", "grouped", is_flag=True,
              help="Collect each host's output and show identical outputs once (like dshbak -c).")
@click.option("--accept-new-host-keys", is_flag=True, help="Record unknown host keys (changed keys are refused).")
@_fanout
@click.pass_obj
def exec_(obj, inventory: str, command: tuple[str, ...], hosts: tuple[str, ...], exclude: tuple[str, ...],
          grouped: bool, accept_new_host_keys: bool, fanout: int) -> None:
    """Run a command on every host at once; output prefixed [host], then each host's exit code.

    Words after -- are quoted one by one (no shell evaluation; for pipes use sh -c '...').
    A leading `python` is the host's python. Exit 0 if every host exited 0, else 11
    (3, or 4 for a host key, when a host could not be reached; the others still run).

    \b
    Example:
      distctl exec inventory.yaml -- nvidia-smi -L
      distctl exec inventory.yaml --host node2 -- python -m pip list
      distctl exec inventory.yaml -- sh -c 'df -h ~ | tail -n 1'
      distctl exec inventory.yaml -c -- python -c 'import torch; print(torch.__version__)'
    """
    commands.exec_command(commands.load_job(inventory, (), (), hosts, exclude), command, (),
                          commands.Options(fanout, accept_new_host_keys), obj["ui"], grouped)


@cli.command()
@INVENTORY
@click.option("--older-than", default="0", metavar="AGE",
              help="Only runs unchanged for this long: 7d, 12h, 30m (a bare number: days).")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@click.option("--yes", is_flag=True, help="Remove without asking.")
@_hosts_chosen
@_fanout
@click.pass_obj
def clean(obj, inventory: str, older_than: str, dry_run: bool, yes: bool, only: tuple[str, ...],
          exclude: tuple[str, ...], fanout: int) -> None:
    """Remove old runs, and code, data and setup folders no remaining run uses, from the hosts.

    A run is removed only when none of its processes lives (judged on each host, whoever
    started the run) and nothing in it changed for --older-than (and the last 5 minutes).
    Lists what it would remove and asks, unless --yes.

    \b
    Example:
      distctl clean inventory.yaml --older-than 7d --dry-run
      distctl clean inventory.yaml --older-than 7d --yes
    """
    from orchestrator.run.cleanup import clean as clean_hosts, parse_age

    age = parse_age(older_than)
    clean_hosts(commands.load_job(inventory, (), (), only, exclude), age, dry_run, yes, fanout, obj["ui"])


def main() -> None:
    cli(prog_name="distctl")
