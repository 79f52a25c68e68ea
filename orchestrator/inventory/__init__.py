"""The inventory: what the user wrote (hosts, defaults, job), validated into frozen dataclasses.

    model      the dataclasses and `load_inventory` (precedence: host over defaults)
    yamlnodes  YAML read with line numbers, so every error names its place in the file
    overrides  `--set KEY=VALUE` applied before validation
    init       `distctl init`: an inventory written from a hostfile or from scratch
"""
