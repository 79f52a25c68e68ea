"""Helpers shared by the test files, one module per kind: ``procfs`` reads /proc, ``net`` hands
out ports, ``fakes`` stands in for hosts in unit tests of pure logic.

Imported as ``support`` (pytest puts ``tests/`` on ``sys.path``), like ``cluster``, ``e2e`` and
``idx``, which stay where they are::

    from support import procfs
    from support.fakes import FakeConnection, FakeStream
"""
