"""Where clients and the server compute: ``engine.device`` and node config ``device``.

``auto`` is CUDA when torch sees a CUDA device, else the CPU. The model, a client's data
(moved once per process: :func:`on_device`), the optimizer's state, the DP kernels and
evaluation run on the chosen device; arrays still cross the wire as CPU numpy. On the
CPU nothing is moved and results are bit-identical to a run that never heard of devices.

A client's device is, first match wins: its node config's ``device`` (a deployed
SuperNode's own), the device the engine gave its process (:func:`set_process_device`:
a worker of ``engine.workers`` with ``engine.device: [cuda:0, cuda:1]``), then
``engine.device`` (the first of a list).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from functools import cache

import numpy as np
import torch

from fedsim import wire
from fedsim.errors import Problem, ScenarioError

CHOICES = "auto, cpu, cuda, cuda:N, mps"

_process: dict[str, str | None] = {"device": None}
_placed: dict[tuple[Hashable, str], torch.Tensor] = {}


def set_process_threads(run_config: Mapping[str, object], key: str) -> None:
    """``torch.set_num_threads(run_config[key])`` once per process, if the key is set."""
    threads = run_config.get(key)
    if threads is not None and _process.get("threads") != str(threads):
        torch.set_num_threads(int(threads))  # type: ignore[call-overload]  # an int in the config
        _process["threads"] = str(threads)


def set_process_device(device: str | None) -> None:
    """Make ``device`` the training device of this process's clients (None: the scenario's)."""
    _process["device"] = device


def resolve(name: str) -> str:
    """``auto`` made concrete: ``cuda`` when available, else ``cpu``; others unchanged."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def device_problem(name: str, key: str = "engine.device") -> Problem | None:
    """Why ``name`` cannot be used on this machine, or None if it can."""
    device = resolve(name)
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if count == 0:
            return Problem(key, f"'{name}' but torch sees no CUDA device here; choose auto or cpu")
        if index >= count:
            return Problem(key, f"'{name}' but torch sees {count} CUDA device(s): cuda:0..")
    elif device == "mps" and not torch.backends.mps.is_available():
        return Problem(key, f"'{name}' but MPS is not available here; choose auto or cpu")
    elif device not in ("cpu", "mps"):
        return Problem(key, f"unknown device '{name}'; choices: {CHOICES}")
    return None


def check_devices(names: str | Sequence[str], key: str = "engine.device") -> None:
    """Raise :class:`ScenarioError` naming ``key`` if any of ``names`` is unusable here."""
    listed = [names] if isinstance(names, str) else list(names)
    problems = [p for n in listed if (p := device_problem(n, key)) is not None]
    if problems:
        raise ScenarioError(problems[:1])


def first(names: str | Sequence[str]) -> str:
    """The device a single process uses: ``names`` itself or the first of a list."""
    return names if isinstance(names, str) else names[0]


def client_device(engine_device: str | Sequence[str], node_config: Mapping[str, object]) -> str:
    """The resolved training device of a client (see the module docstring)."""
    configured = node_config.get(wire.NODE_DEVICE)
    if configured is not None:
        return _resolved(str(configured))
    if _process["device"] is not None:
        return _resolved(_process["device"])
    return _resolved(first(engine_device))


@cache
def _resolved(name: str) -> str:
    return resolve(name)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device ``model``'s parameters live on (the CPU for a model without any)."""
    first_param = next(model.parameters(), None)
    return torch.device("cpu") if first_param is None else first_param.device


def on_device(
    array: np.ndarray, device: str | torch.device, key: Hashable | None = None
) -> torch.Tensor:
    """``array`` as a tensor on ``device``: shared memory on the CPU, copied once elsewhere.

    On another device the copy is kept under ``key`` (a client's partition: the same
    examples every round), so a client's data moves once per process rather than once
    per job or batch; each batch is then an index into the copy. Without a key, the
    array is copied every call.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return torch.from_numpy(array)
    if key is None:
        return torch.from_numpy(array).to(device)
    kept = _placed.get((key, str(device)))
    if kept is None:
        kept = _placed[(key, str(device))] = torch.from_numpy(array).to(device)
    return kept
