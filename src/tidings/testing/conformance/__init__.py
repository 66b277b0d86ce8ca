"""The conformance suite: tests written once, run against every backend via the ``backend`` fixture."""
