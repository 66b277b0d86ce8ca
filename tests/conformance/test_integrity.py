"""Runs the integrity part of the conformance suite on every backend."""

from tidings.testing.conformance.integrity import *  # noqa: F403
