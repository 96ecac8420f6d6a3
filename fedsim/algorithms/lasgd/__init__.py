"""The lasgd algorithm."""
