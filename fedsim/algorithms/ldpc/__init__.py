"""The ldpc algorithm."""
