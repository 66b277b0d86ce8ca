"""Test helpers that ship with tidings: server fixtures and the conformance suite.

A third-party adapter proves itself by running the same suite: add
``pytest_plugins = ["tidings.testing.plugin"]`` to its conftest and import the test modules of
``tidings.testing.conformance``.
"""
