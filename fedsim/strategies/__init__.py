"""Server strategies by registry name.

Flower's own strategies are registered under lower-case names (``fedavg`` is Flower's
FedAvg with a faster aggregation, :mod:`fedsim.algorithms.fedavg.server`); fedsim's strategies
(one per module in this package) register themselves; user code adds more with
:func:`register_strategy` or names ``pkg.module:Class`` in a scenario.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import TypeVar

from flwr.serverapp import strategy as flwr_strategies
from flwr.serverapp.strategy import Strategy

from fedsim.registry import ImportKind, Registry


def is_strategy_class(obj: object) -> bool:
    """Whether ``obj`` is a :class:`~flwr.serverapp.strategy.Strategy` subclass."""
    return inspect.isclass(obj) and issubclass(obj, Strategy)


# fedsim's own strategies (one algorithm package each, fedsim/algorithms/) register
# themselves when their module is imported: on the registry's first lookup, so that
# importing one strategy module does not import every other (they subclass each other).
def _load_shipped() -> None:
    from fedsim.algorithms import shipped_algorithms

    for spec in shipped_algorithms():
        importlib.import_module(spec.server.partition(":")[0])


S = TypeVar("S", bound=type[Strategy])
STRATEGIES: Registry[type[Strategy]] = Registry(
    "strategies",
    importable=ImportKind("a flwr Strategy subclass", is_strategy_class),
    loader=_load_shipped,
)


def register_strategy(name: str) -> Callable[[S], S]:
    """Register a :class:`flwr.serverapp.strategy.Strategy` subclass under ``name``.

    Examples
    --------
    >>> from flwr.serverapp.strategy import FedAvg
    >>> @register_strategy("my-fedavg")
    ... class MyFedAvg(FedAvg):
    ...     pass
    """

    def decorator(cls: S) -> S:
        STRATEGIES.add(name, cls)
        return cls

    return decorator


_FLOWER = {
    "fedprox": ("FedProx", "FedAvg with a proximal term on clients (Li et al. 2020)"),
    "fedadam": ("FedAdam", "server-side Adam on the averaged update (Reddi et al. 2021)"),
    "fedyogi": ("FedYogi", "server-side Yogi (Reddi et al. 2021)"),
    "fedadagrad": ("FedAdagrad", "server-side Adagrad (Reddi et al. 2021)"),
    "fedavgm": ("FedAvgM", "FedAvg with server momentum (Hsu et al. 2019)"),
    "fedmedian": ("FedMedian", "coordinate-wise median (Yin et al. 2018)"),
    "fedtrimmedavg": ("FedTrimmedAvg", "coordinate-wise trimmed mean (Yin et al. 2018)"),
    "krum": ("Krum", "Byzantine-robust Krum selection (Blanchard et al. 2017)"),
    "multikrum": ("MultiKrum", "Multi-Krum (Blanchard et al. 2017)"),
    "bulyan": ("Bulyan", "Bulyan robust aggregation (El Mhamdi et al. 2018)"),
    "qfedavg": ("QFedAvg", "q-fair federated averaging (Li et al. 2020)"),
}
for _name, (_cls, _help) in _FLOWER.items():
    STRATEGIES.add(_name, getattr(flwr_strategies, _cls), help=f"Flower: {_help}")
