"""distctl's training payload: ``python -m trainer`` runs one data-parallel rank.

See ``trainer/__main__.py`` for flags, log lines and exit codes.  Importing this package does
not import torch (``trainer.generated`` and ``trainer.log`` work without it).
"""
