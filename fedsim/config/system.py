"""The ``system`` (device population, attackers) and ``compression`` sections."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from fedsim.config.section import (
    PositiveFloat,
    Probability,
    Section,
    name_shorthand,
    number_shorthand,
)

# ------------------------------------------------------------------------- system


class ConstantDist(Section):
    """Every node gets the same value."""

    distribution: Literal["constant"] = "constant"
    value: PositiveFloat = 1.0


class UniformDist(Section):
    """Values drawn uniformly from ``[low, high]``."""

    distribution: Literal["uniform"] = "uniform"
    low: PositiveFloat
    high: PositiveFloat

    @model_validator(mode="after")
    def _ordered(self) -> UniformDist:
        if self.high < self.low:
            raise ValueError("high must be >= low")
        return self


class LognormalDist(Section):
    """Values ``median * exp(sigma * N(0, 1))``: heavy-tailed device populations."""

    distribution: Literal["lognormal"] = "lognormal"
    median: PositiveFloat = 1.0
    sigma: Annotated[float, Field(ge=0)] = 0.5


class TraceDist(Section):
    """Values read from a CSV column, one row per node (cycled if shorter)."""

    distribution: Literal["trace"] = "trace"
    path: str
    column: str = "speed"


DistributionConfig = Annotated[
    ConstantDist | UniformDist | LognormalDist | TraceDist, Field(discriminator="distribution")
]


class SignFlipAttack(Section):
    """Reply ``g - u`` for the honest update ``u = w - g`` (g: the received model)."""

    name: Literal["sign-flip"] = "sign-flip"


class ScaleAttack(Section):
    """Reply ``g + factor * u``: the honest update scaled."""

    name: Literal["scale"] = "scale"
    factor: float = 10.0


class GaussianAttack(Section):
    """Reply ``g + z``, z Gaussian noise rescaled to the honest update's norm."""

    name: Literal["gaussian"] = "gaussian"


class SameValueAttack(Section):
    """Reply ``g + value`` in every coordinate: an update of one repeated value."""

    name: Literal["same-value"] = "same-value"
    value: float = 1.0


class LabelFlipAttack(Section):
    """Data poisoning: train honestly on labels mapped ``y -> C - 1 - y``."""

    name: Literal["label-flip"] = "label-flip"


AttackConfig = Annotated[
    SignFlipAttack | ScaleAttack | GaussianAttack | SameValueAttack | LabelFlipAttack,
    Field(discriminator="name"),
]


class AttackersConfig(Section):
    """Byzantine clients: which nodes attack (drawn from the seed) and how."""

    fraction: Probability | None = None
    nodes: list[Annotated[int, Field(ge=0)]] | None = None
    attack: AttackConfig = Field(default_factory=ScaleAttack)

    @field_validator("attack", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return name_shorthand(value)

    @model_validator(mode="after")
    def _one_choice(self) -> AttackersConfig:
        if (self.fraction is None) == (self.nodes is None):
            raise ValueError("give exactly one of 'fraction' or 'nodes'")
        return self


class DeviceTraceConfig(Section):
    """A device trace file: per-device compute speed, bandwidths and online intervals."""

    path: str = Field(description="JSON trace file (docs/scenarios.md, system.trace)")
    min_online: Annotated[int, Field(ge=1)] = Field(
        default=2,
        description="a round starts once this many clients are online (the server waits)",
    )


class SystemConfig(Section):
    """The simulated device population that drives the virtual clock."""

    speed: DistributionConfig = Field(default_factory=ConstantDist)
    seconds_per_sample: PositiveFloat = 0.002
    uplink_mbps: DistributionConfig = Field(default_factory=lambda: ConstantDist(value=10.0))
    downlink_mbps: DistributionConfig = Field(default_factory=lambda: ConstantDist(value=50.0))
    latency_s: Annotated[float, Field(ge=0)] = 0.05
    straggle_prob: Probability = 0.0
    straggle_slowdown: Annotated[float, Field(ge=1)] = 10.0
    dropout_prob: Probability = 0.0
    failure_prob: Probability = 0.0
    deadline_s: PositiveFloat | None = None
    # Pin a few persistently slow devices on top of the drawn speeds (nodes 0, 1, ...).
    slow_nodes: Annotated[int, Field(ge=0)] = 0
    slow_node_slowdown: Annotated[float, Field(ge=1)] = 4.0
    # Byzantine clients (a client mod on every engine); none by default.
    attackers: AttackersConfig | None = None
    # Replaces speed, uplink_mbps and downlink_mbps, and adds availability over time.
    trace: DeviceTraceConfig | None = None

    @field_validator("speed", "uplink_mbps", "downlink_mbps", mode="before")
    @classmethod
    def _constant_shorthand(cls, value: Any) -> Any:
        return number_shorthand(value)


# -------------------------------------------------------------------- compression


class LinkCompression(Section):
    """How arrays are coded on one direction of the link (per-array offset and step)."""

    method: Literal["none", "randomized-rounding", "deterministic-rounding"] = "none"
    bits: Annotated[int, Field(ge=1, le=16)] = 8


class CompressionConfig(Section):
    """Lossy coding of the arrays in train/evaluate messages (server <-> clients)."""

    uplink: LinkCompression = Field(default_factory=LinkCompression)
    downlink: LinkCompression = Field(default_factory=LinkCompression)

    @property
    def active(self) -> bool:
        """Whether either direction is coded."""
        return self.uplink.method != "none" or self.downlink.method != "none"
