"""The package tree is the architecture: imports go one way, and nothing imports in a circle.

Layers, lowest first: a module may import its own layer and those below it, never above.
A circle among runtime imports fails too (imports under `if TYPE_CHECKING:` are for the type
checker only and may point sideways within a layer, not upwards). Fabric and paramiko stay in
the ssh package; the host-side programs are sent alone, so they import nothing of distctl.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "orchestrator"
LAYERS = (("contract",), ("errors",), ("shell", "timers"), ("console",), ("hostside",), ("inventory",), ("ssh",),
          ("plan",), ("launch",), ("run",), ("results",), ("slurm",),
          ("cli", "web"))  # cli and web call each other's commands
STDLIB_ONLY = "orchestrator.hostside."  # each program of hostside/ (its __init__ is workstation code)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at run time?) for every import in the file, at any depth."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, runtime: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), False)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), runtime)
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, runtime) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for alias in child.names:
                    sub = f"{child.module}.{alias.name}"
                    found.append((sub if sub in MODULES else child.module, runtime))
            visit(child, runtime)

    visit(ast.parse(path.read_text(encoding="utf-8")), True)
    return found


def layer_of(module: str) -> int:
    unit = module.split(".")[1]
    return next(i for i, units in enumerate(LAYERS) if unit in units)


def own_imports(module: str, runtime_only: bool = False) -> set[str]:
    return {m for m, runtime in imports_of(MODULES[module])
            if m.startswith("orchestrator.") and m in MODULES and (runtime or not runtime_only)}


def test_every_module_belongs_to_a_layer() -> None:
    units = {u for layer in LAYERS for u in layer} | {"__main__"}
    strays = [m for m in MODULES if m != "orchestrator" and m.split(".")[1] not in units]
    assert strays == [], f"add these to a package of LAYERS: {strays}"


@pytest.mark.parametrize("module", [m for m in MODULES if m.count(".") and not m.endswith("__main__")])
def test_imports_go_down_the_layers(module: str) -> None:
    upward = sorted(m for m in own_imports(module) if layer_of(m) > layer_of(module))
    assert upward == [], f"{module} ({'/'.join(LAYERS[layer_of(module)])}) imports a higher layer: {upward}"


def test_no_import_circle() -> None:
    graph = {m: own_imports(m, runtime_only=True) - {m} for m in MODULES}
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                circles.append(path[path.index(n):] + [n])
            elif n not in state:
                walk(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m)
    assert circles == [], "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_fabric_and_paramiko_stay_in_the_ssh_package() -> None:
    users = sorted(m for m, p in MODULES.items() for imp, _ in imports_of(p)
                   if imp.split(".")[0] in ("fabric", "paramiko", "invoke") and not m.startswith("orchestrator.ssh."))
    assert users == []


def test_the_workstation_never_imports_torch() -> None:
    # hostside/collective.py is sent to the hosts (`check --collective`) and imports torch there
    users = sorted(m for m, p in MODULES.items() for imp, _ in imports_of(p)
                   if imp.split(".")[0] in ("torch", "torchvision", "trainer"))
    assert users == ["orchestrator.hostside.collective"] * 2  # torch and torch.distributed, inside main


def test_host_side_programs_import_nothing_of_distctl_but_their_parts() -> None:
    """A program may import the parts joined before it when it is sent (hostside.PARTS), nothing else."""
    from orchestrator.hostside import PARTS

    users = sorted((m, imp) for m, p in MODULES.items() if m.startswith(STDLIB_ONLY)
                   for imp, _ in imports_of(p) if imp.split(".")[0] == "orchestrator"
                   and imp.rsplit(".", 1)[-1] not in PARTS.get(m.rsplit(".", 1)[-1], ())
                   and not (m.endswith("agent_policy") and imp == "orchestrator.hostside.prelude"))
    assert users == []


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule can fail: a made-up plan module that imports the cli layer is caught."""
    fake = tmp_path / "m.py"
    fake.write_text("from orchestrator.cli import commands\nif TYPE_CHECKING:\n    import orchestrator.run.watch\n")
    assert imports_of(fake) == [("orchestrator.cli.commands", True), ("orchestrator.run.watch", False)]
    assert layer_of("orchestrator.cli.commands") > layer_of("orchestrator.plan.model")
