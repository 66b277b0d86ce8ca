"""Runs the bus part of the conformance suite on every backend."""

from tidings.testing.conformance.bus import *  # noqa: F403
