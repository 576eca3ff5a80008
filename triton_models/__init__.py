"""Triton model repository sources: Python-backend models, config templates, builder."""
