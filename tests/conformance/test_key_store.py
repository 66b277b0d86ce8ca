"""Runs the KeyStore suite (the stored data keys) on every store."""

from tidings.testing.conformance.key_store import *  # noqa: F403
