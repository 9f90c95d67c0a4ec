"""Research probes: scripts that answered one question each (see experiments/README.md). Not
imported by the package or the tests; run from the repository root as `python -m experiments.NAME`."""
