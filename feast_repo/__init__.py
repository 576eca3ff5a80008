"""Feast repository of the demo (definitions) and its deterministic data generator."""
