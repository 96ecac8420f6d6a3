"""Real Flower deployments: a SuperLink, SuperNodes on devices, and runs submitted to them.

``fedsim deploy superlink|node|run`` wrap ``flower-superlink``, ``flower-supernode``
and ``flwr run`` (see ``docs/deployment.md``). The Flower app submitted is the folder
``fedsim/deploy/app``: a ``pyproject.toml`` naming the installed ServerApp and
ClientApp, so nothing but the run config travels with a run.
"""
