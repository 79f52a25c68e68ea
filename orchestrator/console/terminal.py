"""What remote text may do to the workstation's terminal: colours, and nothing else.

A rank's log, a host's command output and the tails quoted in errors are written by
programs on the hosts. Printed raw on a terminal, `ESC]0;title BEL` retitles the window,
`ESC[2J` clears the screen and, on some terminals, OSC 52 writes the clipboard. So on a
terminal every control character is shown escaped (`\\x1b`, `\\x07`, ...), the way
journalctl does, except tab and SGR colour sequences (`ESC[...m`). Files and pipes get
the text as it is: callers apply these functions only when the output is a terminal.
"""

from __future__ import annotations

import re

# SGR: ESC [ parameters m. Parameters are digits separated by ';' (or ':' in the ITU form
# of 24-bit colour); anything else after ESC [ is a different command.
_SGR = r"\x1b\[[0-9;:]*m"
# C0 controls but tab, DEL, and C1 controls (U+0080..U+009F: U+009B is a one-character CSI
# for terminals that read C1 in UTF-8).
_CONTROL = r"[\x00-\x08\x0a-\x1f\x7f-\x9f]"
_SHOWN = re.compile(f"({_SGR})|{_CONTROL}")
_HAS_SGR = re.compile(_SGR)
_ANY_CONTROL = re.compile(_CONTROL)
RESET = "\x1b[0m"


def _escape(match: re.Match) -> str:
    return match[1] or f"\\x{ord(match[0]):02x}"


def escape_controls(text: str) -> str:
    """`text` safe for a terminal: control characters shown as `\\xNN`, colours kept.

    `ESC]0;title BEL` becomes the visible text `\\x1b]0;title\\x07`. A line that sets a
    colour gets a reset at its end, so the colour stops with the line.
    """
    if not _ANY_CONTROL.search(text):
        return text
    shown = _SHOWN.sub(_escape, text)
    return shown + RESET if _HAS_SGR.search(text) else shown


def last_redraw(line: str) -> str:
    """The last state of a line redrawn with carriage returns, as a terminal ended up showing it.

    Progress bars (tqdm and the like) rewrite one line: `\\r 10%|#  |\\r 20%|## |...`, and a
    log file keeps every redraw. The last segment that is not blank is what the program
    meant to leave on screen (a trailing blank redraw only cleared the line). Programs that
    redraw a shorter text over a longer one pad it with spaces, as tqdm does, so the last
    segment alone is what the terminal showed.
    """
    if "\r" not in line:
        return line
    for segment in reversed(line.split("\r")):
        if segment.strip():
            return segment
    return ""


def for_terminal(line: str) -> str:
    """One line of remote output as shown on a terminal: its last redraw, controls escaped."""
    return escape_controls(last_redraw(line))
