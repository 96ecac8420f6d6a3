"""fedsim: federated-learning simulation on Flower with a virtual clock.

The public Python API::

    import fedsim
    scenario = fedsim.load_scenario("scenarios/quickstart.yaml")
    result = fedsim.run(scenario)            # one run -> RunResult
    result = fedsim.resume(result.run_dir)   # continue from its last checkpoint
    results = fedsim.run_experiment(scenario)  # variants x seeds -> ExperimentResult

Extension points: :func:`register_algorithm` (a strategy with its spec: its local steps,
per-parameter reply keys, DP refusal; see docs/write-a-strategy.md),
:func:`register_strategy`, :func:`register_model`, and client-side training through
:class:`LocalStep` subclasses registered with :func:`register_step` (a step that needs
the gradient over the node's whole data calls :func:`full_data_gradient`).
Outputs are callbacks: subclass :class:`Callback` and register it with
:func:`register_callback` (or pass objects to ``fedsim.run(callbacks=...)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Modules moved into fedsim/{algorithms,client,config,server}/ keep their old import names
# (old scenarios and run directories name them): see fedsim/moved.py.
from fedsim import moved as _moved

_moved.install()

__all__ = [
    "Callback",
    "ExperimentResult",
    "LocalStep",
    "NodeData",
    "Problem",
    "Reply",
    "RunInfo",
    "RunResult",
    "Scenario",
    "ScenarioError",
    "StepInputs",
    "TrainResult",
    "full_data_gradient",
    "load_scenario",
    "register_algorithm",
    "register_callback",
    "register_model",
    "register_step",
    "register_strategy",
    "resume",
    "run",
    "run_experiment",
]

if TYPE_CHECKING:
    from fedsim.algorithms import register_algorithm
    from fedsim.client.full_gradient import full_data_gradient
    from fedsim.client.steps import LocalStep, Reply, StepInputs, TrainResult, register_step
    from fedsim.compose import load_scenario
    from fedsim.config.schema import Scenario
    from fedsim.data.node_data import NodeData
    from fedsim.errors import Problem, ScenarioError
    from fedsim.experiment import ExperimentResult, run_experiment
    from fedsim.models import register_model
    from fedsim.outputs.callbacks import Callback, RunInfo, register_callback
    from fedsim.runner import RunResult, resume, run
    from fedsim.strategies import register_strategy

_LAZY = {
    "Callback": "fedsim.outputs.callbacks",
    "RunInfo": "fedsim.outputs.callbacks",
    "register_callback": "fedsim.outputs.callbacks",
    "LocalStep": "fedsim.client.steps",
    "Reply": "fedsim.client.steps",
    "StepInputs": "fedsim.client.steps",
    "TrainResult": "fedsim.client.steps",
    "register_step": "fedsim.client.steps",
    "full_data_gradient": "fedsim.client.full_gradient",
    "NodeData": "fedsim.data.node_data",
    "Problem": "fedsim.errors",
    "ScenarioError": "fedsim.errors",
    "register_model": "fedsim.models",
    "ExperimentResult": "fedsim.experiment",
    "RunResult": "fedsim.runner",
    "resume": "fedsim.runner",
    "run": "fedsim.runner",
    "run_experiment": "fedsim.experiment",
    "Scenario": "fedsim.config.schema",
    "load_scenario": "fedsim.compose",
    "register_algorithm": "fedsim.algorithms",
    "register_strategy": "fedsim.strategies",
}


def __getattr__(name: str) -> Any:
    # Lazy: `import fedsim` stays cheap (torch and flwr load only when needed).
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fedsim' has no attribute {name!r}")
