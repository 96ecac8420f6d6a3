"""Scenarios: the schema (by section), its sources, expansion, problems and rules."""
