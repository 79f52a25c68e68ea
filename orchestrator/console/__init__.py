"""Terminal output: `ui` (the one printer, secrets masked) and `terminal` (what a tty can show)."""
