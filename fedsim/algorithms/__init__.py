"""One package per algorithm: ``fedsim/algorithms/<name>/``.

Each holds ``server.py`` (its Flower strategy), ``client.py`` (its local step and any
client action), ``keys.py`` (the message keys both halves use; they never import each
other) and, in ``__init__.py``, its spec.
"""
