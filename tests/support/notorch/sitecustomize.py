"""On PYTHONPATH only while the torch test lane is not picked (tests/support/lanes.py): every
Python a fast-lane test starts refuses to import torch."""

import os

if os.environ.get("DISTCTL_TEST_TORCH_BLOCKED") == "1":
    import notorch_guard

    notorch_guard.install()
