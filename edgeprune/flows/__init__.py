"""Orchestrators: the flows that wire the stages below them into one job each.

``compile`` (prune -> prepare -> measure -> summarize), ``fleet`` (one model on several
devices), ``prune``, ``profile``, ``tune``, ``nightly``. The CLI calls these; nothing
below this layer imports them (docs/architecture.md).
"""
