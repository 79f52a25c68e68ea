"""Remote text on the workstation's terminal: colours pass, every other control is shown escaped;
lines redrawn with \\r show their last redraw. Files and pipes get the bytes as they are."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import lanes
import yaml
from support.net import ephemeral_port

from orchestrator.console.terminal import RESET, escape_controls, for_terminal, last_redraw

ESCAPED = [
    ("plain", "epoch=1 loss=0.25", "epoch=1 loss=0.25"),
    ("tab kept", "a\tb", "a\tb"),
    ("unicode kept", "accuracy ≥ 0.9 ✓ Ünïcödé", "accuracy ≥ 0.9 ✓ Ünïcödé"),
    ("window title (OSC 0, BEL)", "\x1b]0;owned\x07done", "\\x1b]0;owned\\x07done"),
    ("clear screen", "\x1b[2Jgone", "\\x1b[2Jgone"),
    ("clipboard (OSC 52, ST)", "\x1b]52;c;ZWNobyBoaQ==\x1b\\", "\\x1b]52;c;ZWNobyBoaQ==\\x1b\\"),
    ("cursor moves", "\x1b[1A\x1b[10;20H", "\\x1b[1A\\x1b[10;20H"),
    ("private mode (hide cursor)", "\x1b[?25l", "\\x1b[?25l"),
    ("lone escape", "a\x1bb", "a\\x1bb"),
    ("bell", "ding\x07", "ding\\x07"),
    ("backspace", "abc\x08\x08", "abc\\x08\\x08"),
    ("NUL and DEL", "a\x00b\x7f", "a\\x00b\\x7f"),
    ("vertical tab, form feed", "\x0b\x0c", "\\x0b\\x0c"),
    ("C1 CSI (U+009B)", "\x9b2J", "\\x9b2J"),
    ("C1 OSC (U+009D) and ST (U+009C)", "\x9d0;t\x9c", "\\x9d0;t\\x9c"),
    ("SGR colour kept, reset added", "\x1b[31mred\x1b[0m", "\x1b[31mred\x1b[0m" + RESET),
    ("SGR 256 and 24-bit colours", "\x1b[38;5;196mx\x1b[38:2::1:2:3my",
     "\x1b[38;5;196mx\x1b[38:2::1:2:3my" + RESET),
    ("SGR without parameters", "\x1b[mx", "\x1b[mx" + RESET),
    ("colour next to a title", "\x1b[1m\x1b]2;t\x07", "\x1b[1m\\x1b]2;t\\x07" + RESET),
    ("not quite SGR", "\x1b[31;1x", "\\x1b[31;1x"),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in ESCAPED], ids=[c[0] for c in ESCAPED])
def test_escape_controls(text, expected):
    assert escape_controls(text) == expected


@pytest.mark.parametrize("text", [c[1] for c in ESCAPED], ids=[c[0] for c in ESCAPED])
def test_nothing_but_colours_reaches_the_terminal(text):
    left = re.sub(r"\x1b\[[0-9;:]*m", "", escape_controls(text))
    assert not re.search(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]", left)


REDRAWN = [
    ("no carriage return", "epoch=1", "epoch=1"),
    ("redraws: the last one", "a\rb\rc", "c"),
    ("tqdm", "\r  0%|          | 0/3\r 33%|###3      | 1/3\r100%|##########| 3/3",
     "100%|##########| 3/3"),
    ("a blank last redraw only cleared the line", "50%\r   \r", "50%"),
    ("clear then write", "50%\r   \rdone", "done"),
    ("only blanks", "\r  \r", ""),
    ("leading carriage return", "\rhello", "hello"),
]


@pytest.mark.parametrize("line, expected", [c[1:] for c in REDRAWN], ids=[c[0] for c in REDRAWN])
def test_last_redraw(line, expected):
    assert last_redraw(line) == expected


def test_for_terminal_takes_the_last_redraw_then_escapes():
    assert for_terminal("\x1b]0;t\x07 10%\r\x1b[2J100%") == "\\x1b[2J100%"
    assert for_terminal("a\x07b") == "a\\x07b"


def test_secrets_belong_to_one_ui():
    from orchestrator.console.ui import Ui

    one, other = Ui(color=False), Ui(color=False)
    one.hide(["tok3n", ""])
    one.hide(["tok3n-longer"])
    assert one.masked("a tok3n-longer b tok3n") == "a *** b ***"
    assert other.masked("a tok3n") == "a tok3n"


def test_ui_escapes_on_a_terminal_only_and_masks_first(capsys):
    from orchestrator.console.ui import Ui

    ui = Ui(color=False)
    ui.hide(["s3cr\x07t"])
    ui._tty_out, ui._tty_err = True, True  # as if both were terminals
    assert ui.shown("key=s3cr\x07t \x1b[2J") == "key=*** \\x1b[2J"
    ui.error("rank 1 failed; last lines:\n    \x1b]0;t\x07boom\n    50%\r100%")
    assert capsys.readouterr().err == "distctl: error: rank 1 failed; last lines:\n    \\x1b]0;t\\x07boom\n    100%\n"
    ui._tty_out, ui._tty_err = False, False  # files and pipes: as written, secrets still masked
    assert ui.shown("key=s3cr\x07t \x1b[2J") == "key=*** \x1b[2J"


# ---------------------------------------------------------------- end to end, through a pty

REPO = Path(__file__).resolve().parent.parent
EVIL = "\x1b]0;owned\x07\x1b[2J\x1b]52;c;ZWNobyBoaQ==\x07\x9b6n\x1b[32mgreen\x1b[0m"
# What a user sees of EVIL on a terminal: every control but the colours written out.
SEEN = "\\x1b]0;owned\\x07\\x1b[2J\\x1b]52;c;ZWNobyBoaQ==\\x07\\x9b6n\x1b[32mgreen\x1b[0m"


def _python_that_prints(tmp_path: Path) -> Path:
    """The host's `python`: a wrapper that has the trainer print EVIL (and a progress bar)
    to its log before it starts, as a rank's own program would."""
    wrapper = tmp_path / "python"
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = -m ] && [ "$2" = trainer ]; then\n'
        f"  printf '%s\\n' {_sh_quote(EVIL)} >&2\n"
        "  printf ' 10%%\\r 50%%\\r100%%\\n' >&2\n"
        "fi\n"
        f'exec {_sh_quote(sys.executable)} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _read_pty(fd: int, proc: subprocess.Popen, timeout: float) -> bytes:
    """Everything the program wrote to the terminal, until it exits and the pty drains."""
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the slave side is closed
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    return out


@pytest.fixture(scope="module")
def evil_run(tmp_path_factory, standin_mnist):
    """A finished local run (`connection: local`) whose rank 0 printed EVIL into its log."""
    tmp_path = tmp_path_factory.mktemp("evil")
    inventory = {
        "hosts": [{"name": "local", "connection": "local", "slots": 1, "workdir": str(tmp_path / "work"),
                   "python": str(_python_that_prints(tmp_path))}],
        "job": {"name": "evil", "port": ephemeral_port(), "data": str(standin_mnist),
                "train": {"epochs": 1, "batch_size": 256, "timeout": 60}},
    }
    (tmp_path / "inv.yaml").write_text(yaml.safe_dump(inventory))
    # this checkout, with the torch-free stand-in as the bundled trainer (module scope: conftest's
    # bundled_trainer has not put it on the path yet)
    path = [lanes.STANDIN, os.environ.get("PYTHONPATH", ""), str(REPO)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p), "NO_COLOR": "1"}
    up = subprocess.run([sys.executable, "-m", "orchestrator", "up", "inv.yaml"], cwd=tmp_path, env=env,
                        capture_output=True, timeout=300)
    assert up.returncode == 0, up.stderr.decode(errors="replace")
    return tmp_path, env, up.stdout


def test_logs_on_a_terminal_shows_escapes_and_never_sends_the_raw_sequences(evil_run):
    cwd, env, _ = evil_run
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "logs"], cwd=cwd, env=env,
                                stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE)
        os.close(slave)
        shown = _read_pty(master, proc, timeout=60)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        os.close(master)
    lines = shown.decode().split("\r\n")  # the pty turns \n into \r\n
    assert f"[local r0] {SEEN}{RESET}" in lines
    assert "[local r0] 100%" in lines  # the progress bar's last redraw
    left = re.sub(rb"\x1b\[[0-9;:]*m", b"", shown).replace(b"\r\n", b"\n")
    assert not re.search(rb"[\x00-\x08\x0b-\x1f\x7f]|\xc2[\x80-\x9f]", left), left


def test_logs_into_a_pipe_passes_the_bytes_as_they_are(evil_run):
    cwd, env, streamed = evil_run
    done = subprocess.run([sys.executable, "-m", "orchestrator", "logs"], cwd=cwd, env=env,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split(b"\n")
    assert f"[local r0] {EVIL}".encode() in lines
    assert b"[local r0]  10%\r 50%\r100%" in lines
    assert f"[local r0] {EVIL}".encode() in streamed.split(b"\n")  # `up`'s own stream, also a pipe
