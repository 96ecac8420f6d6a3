"""The compression algorithm."""
