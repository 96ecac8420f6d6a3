"""Engines that run fedsim's ServerApp and ClientApp (generic: no strategy or client import)."""
