"""The ServerApp (``fedsim.server.app:app``), its round loop, recorder and checkpoints."""
