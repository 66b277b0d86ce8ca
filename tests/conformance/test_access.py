"""Runs the access control part of the conformance suite on every store (the store's own log)."""

from tidings.testing.conformance.access import *  # noqa: F403
