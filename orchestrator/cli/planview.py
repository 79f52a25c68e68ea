"""The plan as text (`up --dry-run`, `check --show-plan`): every step, phase by phase.

`full_text` prints each command byte for byte, as `up` runs it (`--full`). `readable_text`,
the default, prints the same steps with two abbreviations a reader can undo with `--full`:
- a host-side program's source, sent as `python -c SOURCE`, is named instead:
  `python -c <follow.py: 167 lines, sha256 ab12cd34ef56ab12>`;
- the steps of one phase that differ only in per-host values (host, ranks, group rank,
  interface...) are printed once, as a template with `{{name}}` placeholders
  (template.py), then a table of each host's values.
Pure: text from the Plan alone.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Iterator, Sequence
from functools import cache

from orchestrator import hostside
from orchestrator.plan.model import HostPlan, Plan, Step, StepKind
from orchestrator.cli.template import Template, make_template, tokens

STEP_TITLES = {
    StepKind.PREPARE: "create the run directory and write the rank environment (stdin)",
    StepKind.PUSH: "push {artifact} (a tar stream on stdin; skipped when the host has it)",
    StepKind.SETUP: "run job.setup in its own copy of the code (skipped when it last succeeded for this "
                     "code), then probe python",
    StepKind.LAUNCH: "start ranks {ranks} in the run's copy of the code, detached, one process group each",
    StepKind.WAIT_PORT: "wait until rank 0 listens on {addr}:{port}",
    StepKind.STREAM: "stream the logs of ranks {ranks}",
    StepKind.REFOLLOW: "reconnect, then stream ranks {ranks} again from the last line shown",
    StepKind.RESTART: "the host's agent writes each rank's placement and attempt to rankR.env (the wrapper "
                      "sources it), then starts ranks {ranks} again",
}

HOW_TO_READ = ["  shown short: host-side programs by name, size and digest; steps alike on several hosts once,",
               "  their {{placeholders}} filled from the table under them. Every command byte for byte: --full"]


def full_text(plan: Plan) -> str:
    """Every step and its exact command and (masked) stdin: what `up` runs."""
    out = plan_header(plan)
    for phase, numbered in _phases(plan):
        out.append(f"\n## {phase_title(plan, phase)}")
        for number, step in numbered:
            out.append(f"\n# {number}. {step_text(plan, step)}")
    return "\n".join(out)


def readable_text(plan: Plan) -> str:
    """The plan with programs named and per-host steps as templates (the module's docstring)."""
    out = [*plan_header(plan), *HOW_TO_READ]
    tables: dict[tuple[str, ...], str] = {}  # a values table already printed -> its steps
    for phase, numbered in _phases(plan):
        out.append(f"\n## {phase_title(plan, phase)}")
        for group in _alike(numbered):
            out += _group_lines(plan, group, tables)
    return "\n".join(out)


def plan_header(plan: Plan) -> list[str]:
    out = [f"run {plan.run_id}: {plan.world_size} rank(s), init method {plan.init_method}"]
    for hp in plan.hosts:
        out.append(f"  {hp.host.name} ({hp.host.address}): ranks {_ranks(hp)}; interface {hp.iface}; "
                   f"run dir {hp.rundir}")
    return out + [f"  note: {n}" for n in plan.notes]


def phase_title(plan: Plan, phase: int) -> str:
    if phase == 0:
        return "only if it happens, at run time"
    count = sum(s.phase == phase for s in plan.steps)
    return f"phase {phase}: " + ("one step" if count == 1 else f"{count} steps at once")


def step_text(plan: Plan, step: Step) -> str:
    """`node1: [when ...: ]what it does`, then its command and its stdin (as comments)."""
    title = STEP_TITLES[step.kind].format(artifact=step.artifact, addr=plan.master_addr, port=plan.port,
                                          ranks=_ranks(plan.host_plan(step.host)))
    when = f"when {step.when}: " if step.when else ""
    lines = [f"{step.host}: {when}{title}", step.command]
    if step.stdin:
        lines += ["# stdin:", *(f"#   {line}" for line in step.stdin.splitlines())]
    return "\n".join(lines)


def _ranks(hp: HostPlan) -> str:
    return ", ".join(str(r.rank) for r in hp.ranks)


Numbered = Sequence[tuple[int, Step]]


def _phases(plan: Plan) -> Iterator[tuple[int, Numbered]]:
    """Each phase's steps with their numbers (1, 2, ... over the whole plan), phase 0 last."""
    numbered = list(enumerate(plan.steps, 1))
    for phase in dict.fromkeys(s.phase for s in plan.steps):
        yield phase, [(n, s) for n, s in numbered if s.phase == phase]


def _alike(numbered: Numbered) -> list[Numbered]:
    """A phase's steps by kind (and artifact), each kind where it first appears."""
    groups: dict[tuple[StepKind, str | None], list[tuple[int, Step]]] = {}
    for number, step in numbered:
        groups.setdefault((step.kind, step.artifact), []).append((number, step))
    return list(groups.values())


def _group_lines(plan: Plan, group: Numbered, tables: dict[tuple[str, ...], str]) -> list[str]:
    """One step as it is; several as a template and their values, those of one shape together."""
    texts = [abbreviate_programs(step_text(plan, step)) for _, step in group]
    shapes: dict[int, list[int]] = {}
    for i, text in enumerate(texts):
        shapes.setdefault(len(tokens(text)), []).append(i)
    out: list[str] = []
    for members in shapes.values():
        numbers = [group[i][0] for i in members]
        hosts = [plan.host_plan(group[i][1].host) for i in members]
        found = make_template([texts[i] for i in members], [host_values(plan, hp) for hp in hosts],
                              CONTEXTS) if len(members) > 1 else None
        if found is None:
            out += [f"\n# {n}. {texts[i]}" for n, i in zip(numbers, members)]
        else:
            out += [f"\n# {step_numbers(numbers)}. {found.text}", *_values_lines(found, numbers, tables)]
    return out


# ------------------------------------------------------------ host-side programs by name


def program_mark(name: str, source: str | None = None) -> str:
    """`<follow.py: 167 lines, sha256 ab12cd34ef56ab12>`: what a program's quoted source reads as."""
    source = hostside.source(name) if source is None else source
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    return f"<{name}.py: {len(source.splitlines())} lines, sha256 {digest}>"


@cache
def _program_forms() -> tuple[tuple[str, str], ...]:
    """Each program's source as a command carries it, and its mark: shell-quoted after `python -c`,
    and that again inside a shell-quoted JSON string (the agent's config holds its restart command)."""
    forms = []
    # The launch step also writes sitecustomize.py (`distctl stacks`' handler) with printf: a file, not
    # a program, but as long and as unchanging.
    sources = [(name, hostside.source(name)) for name in hostside.PROGRAMS]
    sources.append(("sitecustomize", hostside.site_source()))
    for name, source in sources:
        quoted = shlex.quote(source)
        in_json = json.dumps(quoted)[1:-1].replace("'", "'\"'\"'")
        forms += [(quoted, program_mark(name, source)), (in_json, program_mark(name, source))]
    return tuple(sorted(forms, key=lambda f: len(f[0]), reverse=True))


def abbreviate_programs(text: str) -> str:
    for source, mark in _program_forms():
        text = text.replace(source, mark)
    return text


# ------------------------------------------------------------ per-host values


# Where a host of one rank would read {{R0}} for its group rank too, the context decides.
CONTEXTS = {"group_rank": ("GROUP_RANK=", '"me":')}


def host_values(plan: Plan, hp: HostPlan) -> list[tuple[str, str]]:
    """A host's values by name, in the order a tie between two names is decided."""
    return [("host", hp.host.name), ("address", hp.host.address), ("iface", hp.iface),
            *((f"R{r.local_rank}", str(r.rank)) for r in hp.ranks),
            ("group_rank", str(plan.hosts.index(hp))), ("ranks_here", str(len(hp.ranks))),
            ("rundir", hp.rundir), ("workdir", hp.workdir), ("code_dir", hp.code_dir), ("python", hp.python)]


def step_numbers(numbers: Sequence[int]) -> str:
    """`5-20` for a run of step numbers, else `3, 5, 7`."""
    if len(numbers) > 1 and list(numbers) == list(range(numbers[0], numbers[-1] + 1)):
        return f"{numbers[0]}-{numbers[-1]}"
    return ", ".join(map(str, numbers))


_RANK = re.compile(r"R(\d+)\Z")


def values_table(found: Template) -> list[list[str]]:
    """The header, then a row per text: `host` first, a host's ranks {{R0}}..{{R7}} in one column."""
    names = [n for n in found.names if n != "host"]
    ranks = sorted((n for n in names if _RANK.match(n)), key=lambda n: int(n[1:]))
    first = int(ranks[0][1:]) if ranks else 0
    if ranks != [f"R{i}" for i in range(first, first + len(ranks))]:
        ranks = []  # not a run of local ranks: a column each
    columns: list[tuple[str, list[str]]] = [("host", ["host"])]
    for name in names:
        if name == (ranks[0] if ranks else None):
            columns.append((_span_name(ranks), ranks))
        elif name not in ranks:
            columns.append((name, [name]))
    return [[title for title, _ in columns]] + [
        [_cell([values.get(n, "") for n in group]) for _, group in columns] for values in found.values]


def _span_name(ranks: list[str]) -> str:
    return f"{ranks[0]}..{ranks[-1]}" if len(ranks) > 1 else ranks[0]


def _cell(values: list[str]) -> str:
    """One value; ranks: `8..15` when consecutive."""
    if len(values) > 1 and all(v.isdigit() for v in values) and \
            [int(v) for v in values] == list(range(int(values[0]), int(values[0]) + len(values))):
        return f"{values[0]}..{values[-1]}"
    return " ".join(values)


def _values_lines(found: Template, numbers: Sequence[int], tables: dict[tuple[str, ...], str]) -> list[str]:
    rows = values_table(found)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = tuple("#   " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)
    if lines in tables:
        return [f"# values: as for steps {tables[lines]}"]
    tables[lines] = step_numbers(numbers)
    return ["# values, a step per row:", *lines]
