"""The fedavg algorithm."""
