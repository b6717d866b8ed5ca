"""Layers shared by zoo models."""
