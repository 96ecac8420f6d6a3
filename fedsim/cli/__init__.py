"""The ``fedsim`` command line; the only code in fedsim that prints or exits."""
