"""The fedaws algorithm."""
