"""Runs the GroupState suite (leases, inbox, dead letters, parking, traces) on every store."""

from tidings.testing.conformance.group_state import *  # noqa: F403
