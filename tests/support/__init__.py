"""Helpers shared by the test files, one module per kind:

- ``fakes``: a fake connection, stream and UI, for unit tests of pure logic; ``watched``: a run
  on such fake hosts, watched in process as ``up`` watches one;
- ``procfs``: /proc readers (the cluster's sweeps, tests looking for ranks); ``net``: ports;
- ``known_hosts``, ``workdirs``, ``reports``: host keys, fresh workdirs and error reports, for
  tests that run the real ``distctl`` on the cluster.

Imported as ``support`` (pytest puts ``tests/`` on ``sys.path``), like ``cluster``, ``e2e`` and
``idx``, which stay where they are::

    from support import procfs
    from support.fakes import FakeConnection, FakeStream
"""
