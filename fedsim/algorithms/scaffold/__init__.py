"""The scaffold algorithm."""
