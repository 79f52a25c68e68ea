"""Programs that run on the hosts, sent as `python -c <module source> ARGS`.

Each is one stdlib-only module with `main(argv)`, runnable and testable here as it is
there; nothing in them imports from `orchestrator` (the host has no distctl installed).
"""
