"""Which script a job.command runs (programcheck.script_of), table-driven."""

from __future__ import annotations

import pytest

from orchestrator.launch.programcheck import script_of


@pytest.mark.parametrize("command, script", [
    (("python", "train.py", "--epochs", "3"), "train.py"),
    (("python3", "-u", "src/train.py"), "src/train.py"),
    (("/opt/venv/bin/python", "./train.py"), "./train.py"),
    (("python", "-m", "trainer"), None),
    (("python", "-mtrainer"), None),
    (("python", "-c", "print(1)"), None),
    (("python", "/abs/train.py"), None),
    (("bash", "run.sh"), None),
    (("torchrun", "train.py"), None),
    ((), None),
])
def test_the_script_a_command_runs(command, script):
    assert script_of(command) == script
