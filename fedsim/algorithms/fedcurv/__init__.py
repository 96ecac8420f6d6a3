"""The fedcurv algorithm."""
