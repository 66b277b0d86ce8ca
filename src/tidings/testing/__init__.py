"""Test helpers that ship with tidings: server fixtures and the conformance suite.

A third-party adapter proves itself by running the same suite: add
``pytest_plugins = ["tidings.testing.plugin"]`` to its conftest and import the test modules of
``tidings.testing.conformance``.
"""

import contextlib

# The suites are imported by other projects' tests: their asserts should say what they compared.
# Registered here, before the plugin imports any of them (registering later has no effect); the
# helpers here serve without pytest too (the demo starts its servers with them).
with contextlib.suppress(ImportError):
    import pytest

    pytest.register_assert_rewrite("tidings.testing.conformance")
