"""The command line: Click options in `main`, each command's work in `commands`, its text in `render`."""
