"""Runs the store conformance suite (shipped in tidings.testing) on every backend."""

from tidings.testing.conformance.store import *  # noqa: F403
