"""Benchmarking: deploy bundles, the on-device runner, executors (local, SSH), statistics."""
