"""``compression``: coded links, applied by the scenario's ``compression`` section.

Not a strategy of its own: ``server.py`` wraps the scenario's strategy, ``client.py`` is
the matching client mod, ``codec.py`` codes whole messages for both.
"""
