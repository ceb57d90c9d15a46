"""Structured pruning: the prune space of a model, importance criteria, search strategies."""
