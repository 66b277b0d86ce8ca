"""Runs the timer part of the conformance suite on every store."""

from tidings.testing.conformance.timers import *  # noqa: F403
