"""The plan: inventory + discovered facts -> the exact steps `up` runs and `--dry-run` prints. Pure.

    model    `Plan` (a `RunState` with steps), `plan_launch`
    state    `RunState`, the run model every later command reads back, and the run records
    scripts  the shell each step runs on a host
    facts    discovery's commands and parsers, and the route / master-address decisions
"""
