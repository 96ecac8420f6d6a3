"""The agc algorithm."""
