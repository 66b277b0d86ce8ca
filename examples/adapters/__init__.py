"""Adapters written outside tidings, as a third party would: see docs/adapters.md."""
