"""distctl: launch and manage data-parallel PyTorch training on SSH hosts.

The workstation side. It never imports torch: the `trainer` package is what
runs on the hosts, and this package only pushes and starts it.
"""

__version__ = "0.1.0"
