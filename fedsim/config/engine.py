"""The ``engine`` section: one tagged section per engine."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator

from fedsim.algorithms.spec import ROUND_CLOCK, VIRTUAL_CLOCK
from fedsim.config.section import (
    MAX_WORKERS,
    Section,
)

# ------------------------------------------------------------------ engine, output


# A torch device the engine.device key accepts (what exists is checked before a run).
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")


class ClientResources(Section):
    """Ray resources one ClientApp actor reserves (engine ``ray``)."""

    num_cpus: Annotated[int, Field(ge=1)] = 1
    num_gpus: Annotated[float, Field(ge=0)] = 0.0


class _EngineSection(Section):
    """Keys every engine reads. Each engine's section adds its own (a tagged union)."""

    # Wall-clock seconds a client may take to reply before it counts as a failure.
    client_timeout_s: Annotated[float, Field(gt=0)] | None = None
    # A round whose failed replies reach this share of its replies is a failed round
    # (1.0: every reply failed); null: never stop. Injected faults do not count.
    max_failure_fraction: Annotated[float, Field(gt=0, le=1)] | None = 1.0
    # Failed rounds in a row that stop the run (exit 1, run directory marked FAILED).
    max_failed_rounds: Annotated[int, Field(ge=1)] = 1
    # Where clients train: auto (CUDA when present, else CPU) | cpu | cuda | cuda:N | mps,
    # or a list of them that worker processes take in turn ([cuda:0, cuda:1]).
    device: str | Annotated[list[str], Field(min_length=1)] = "auto"
    # torch.set_num_threads in every process that trains (with another process on a
    # core, two threads made small updates 20-60x slower; one thread was unaffected).
    threads_per_worker: Annotated[int, Field(ge=1, le=MAX_WORKERS)] = 1
    # Whether the engine's grid can save and restore every node's state
    # (``output.checkpoint_every``, ``fedsim run --resume``).
    resumable: ClassVar[bool] = False
    # Whether the engine can stop a client past ``client_timeout_s`` (kill its process)
    # and time it from the start of its own work; an engine that cannot refuses the key.
    stops_late_clients: ClassVar[bool] = False
    # What algorithms may need of it (fedsim.algorithms.spec: VIRTUAL_CLOCK, ...).
    capabilities: ClassVar[frozenset[str]] = frozenset()

    @field_validator("device")
    @classmethod
    def _device_names(cls, value: str | list[str]) -> str | list[str]:
        for name in [value] if isinstance(value, str) else value:
            if not DEVICE_PATTERN.fullmatch(name):
                raise ValueError(f"unknown device '{name}'; choices: auto, cpu, cuda, cuda:N, mps")
        return value


class InProcessEngine(_EngineSection):
    """fedsim's in-process grid with a virtual clock (the default engine)."""

    name: Literal["inprocess"] = "inprocess"
    resumable: ClassVar[bool] = True
    stops_late_clients: ClassVar[bool] = True
    capabilities: ClassVar[frozenset[str]] = frozenset({VIRTUAL_CLOCK, ROUND_CLOCK})
    # Processes that run the clients: 1 = this process (no IPC); N long-lived worker
    # processes, nodes pinned to one; auto = physical cores // threads_per_worker.
    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = 1
    # Train up to this many of a dispatch's clients together in one stacked computation
    # (0: one by one; with workers, each worker its own nodes'; auto: as many as half
    # the free memory of the training device holds). Replies equal the one-by-one ones
    # up to float rounding, not bit for bit, so it is off by default.
    batch_clients: Annotated[int, Field(ge=0)] | Literal["auto"] = 0

    @field_validator("batch_clients", mode="before")
    @classmethod
    def _batch_choice(cls, value: Any) -> Any:
        if value == "auto" or (
            isinstance(value, int) and not isinstance(value, bool) and value >= 0
        ):
            return value
        raise ValueError("must be a whole number >= 0 or 'auto'")

    @field_validator("workers", mode="before")
    @classmethod
    def _workers_choice(cls, value: Any) -> Any:
        # One message for the union (pydantic would report each alternative).
        if value == "auto" or (
            isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_WORKERS
        ):
            return value
        raise ValueError(f"must be a whole number in 1..{MAX_WORKERS} or 'auto'")


class RayEngine(_EngineSection):
    """Flower's Ray simulation engine (``fedsim[ray]``): a local Ray or a cluster."""

    name: Literal["ray"] = "ray"
    client_resources: ClientResources = Field(default_factory=ClientResources)
    num_cpus: Annotated[int, Field(ge=1)] | None = None
    object_store_mb: Annotated[int, Field(ge=80)] = 512
    ray_address: str | None = None
    # Flower's grid, wrapped: fedsim keeps the clock of Flower's rounds on it.
    capabilities: ClassVar[frozenset[str]] = frozenset({ROUND_CLOCK})


EngineConfig = Annotated[InProcessEngine | RayEngine, Field(discriminator="name")]
ENGINE_SECTIONS: tuple[type[_EngineSection], ...] = (InProcessEngine, RayEngine)
