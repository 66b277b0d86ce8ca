"""Runs the aggregate and projection part of the conformance suite on every backend."""

from tidings.testing.conformance.aggregates import *  # noqa: F403
