"""Benchmarks of tidings against the raw drivers and the ``eventsourcing`` library."""
