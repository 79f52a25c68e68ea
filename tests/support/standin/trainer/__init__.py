"""A torch-free stand-in for distctl's bundled trainer, for tests of mechanisms (see __main__.py).

A test that does not ask for the ``real_trainer`` fixture gets this package as ``trainer``:
conftest puts ``tests/support/standin`` first on PYTHONPATH, where distctl looks for the trainer
package it pushes (``packing.trainer_root``).
"""
