"""Refuse ``import torch`` (and torchvision) outside the torch test lane; see tests/support/lanes.py.

Stdlib only: it is imported at interpreter start-up by ``sitecustomize`` in every Python a
fast-lane test starts.
"""

import importlib.abc
import sys

BLOCKED = ("torch", "torchvision")
MESSAGE = ("%s imported outside the torch test lane: a test that starts torch asks for the `torch` "
           "or `real_trainer` fixture (tests/conftest.py), which puts it in the torch lane")


class TorchBlocker(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in BLOCKED:
            raise ImportError(MESSAGE % fullname, name=fullname)
        return None


def install() -> None:
    if not any(isinstance(finder, TorchBlocker) for finder in sys.meta_path):
        sys.meta_path.insert(0, TorchBlocker())
