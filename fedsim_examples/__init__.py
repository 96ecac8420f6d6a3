"""Examples referenced from the docs (and run by the tests)."""
