"""The ClientApp, its single local training loop, and the local steps strategies ask for."""
