"""The scenario schema: one frozen, validated description of an experiment.

Every section is a frozen pydantic model with ``extra="forbid"``, so a typo is an
error that names its key. Components receive only their own section, defined in one
module per section (:mod:`fedsim.config.data`, ``client``, ``system``, ``engine``,
``output``); this module holds the whole :class:`Scenario` and names every section's
classes (``from fedsim.config.schema import DataConfig`` keeps working). Loading from
YAML, ``--set`` overrides and variant expansion live in :mod:`fedsim.config.sources`.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator

from fedsim.config.client import (
    ClientConfig as ClientConfig,
)
from fedsim.config.client import (
    CrossEntropyLoss as CrossEntropyLoss,
)
from fedsim.config.client import (
    DPConfig as DPConfig,
)
from fedsim.config.client import (
    EntropyRegularisedLoss as EntropyRegularisedLoss,
)
from fedsim.config.client import (
    LabelSmoothingLoss as LabelSmoothingLoss,
)
from fedsim.config.client import (
    LogitAdjustedLoss as LogitAdjustedLoss,
)
from fedsim.config.client import (
    LossConfig as LossConfig,
)
from fedsim.config.client import (
    LowPrecisionWeights as LowPrecisionWeights,
)
from fedsim.config.client import (
    ModelConfig as ModelConfig,
)
from fedsim.config.client import (
    OptimizerConfig as OptimizerConfig,
)
from fedsim.config.client import (
    SquaredErrorLoss as SquaredErrorLoss,
)
from fedsim.config.client import (
    StrategyConfig as StrategyConfig,
)
from fedsim.config.data import (
    CifarDataset as CifarDataset,
)
from fedsim.config.data import (
    ContiguousPartitioner as ContiguousPartitioner,
)
from fedsim.config.data import (
    DataConfig as DataConfig,
)
from fedsim.config.data import (
    DatasetConfig as DatasetConfig,
)
from fedsim.config.data import (
    DigitsDataset as DigitsDataset,
)
from fedsim.config.data import (
    DirichletPartitioner as DirichletPartitioner,
)
from fedsim.config.data import (
    HubDataset as HubDataset,
)
from fedsim.config.data import (
    IidPartitioner as IidPartitioner,
)
from fedsim.config.data import (
    LabelNoiseConfig as LabelNoiseConfig,
)
from fedsim.config.data import (
    LeafDataset as LeafDataset,
)
from fedsim.config.data import (
    Mnist1dDataset as Mnist1dDataset,
)
from fedsim.config.data import (
    MomentEncodingConfig as MomentEncodingConfig,
)
from fedsim.config.data import (
    NaturalPartitioner as NaturalPartitioner,
)
from fedsim.config.data import (
    NpzDataset as NpzDataset,
)
from fedsim.config.data import (
    OneClassPartitioner as OneClassPartitioner,
)
from fedsim.config.data import (
    PartitionerConfig as PartitionerConfig,
)
from fedsim.config.data import (
    PathologicalPartitioner as PathologicalPartitioner,
)
from fedsim.config.data import (
    RegressionDataset as RegressionDataset,
)
from fedsim.config.data import (
    ShardsPartitioner as ShardsPartitioner,
)
from fedsim.config.data import (
    SharingConfig as SharingConfig,
)
from fedsim.config.data import (
    TextDataset as TextDataset,
)
from fedsim.config.data import (
    has_regression_targets as has_regression_targets,
)
from fedsim.config.engine import (
    DEVICE_PATTERN as DEVICE_PATTERN,
)
from fedsim.config.engine import (
    ENGINE_SECTIONS as ENGINE_SECTIONS,
)
from fedsim.config.engine import (
    ClientResources as ClientResources,
)
from fedsim.config.engine import (
    EngineConfig as EngineConfig,
)
from fedsim.config.engine import (
    InProcessEngine as InProcessEngine,
)
from fedsim.config.engine import (
    RayEngine as RayEngine,
)
from fedsim.config.engine import (
    _EngineSection as _EngineSection,
)
from fedsim.config.output import (
    CallbackEntry as CallbackEntry,
)
from fedsim.config.output import (
    OutputConfig as OutputConfig,
)
from fedsim.config.output import (
    PlotFormat as PlotFormat,
)
from fedsim.config.section import (
    PositiveFloat as PositiveFloat,
)
from fedsim.config.section import (
    Probability as Probability,
)
from fedsim.config.section import (
    Section as Section,
)
from fedsim.config.system import (
    AttackConfig as AttackConfig,
)
from fedsim.config.system import (
    AttackersConfig as AttackersConfig,
)
from fedsim.config.system import (
    CompressionConfig as CompressionConfig,
)
from fedsim.config.system import (
    ConstantDist as ConstantDist,
)
from fedsim.config.system import (
    DeviceTraceConfig as DeviceTraceConfig,
)
from fedsim.config.system import (
    DistributionConfig as DistributionConfig,
)
from fedsim.config.system import (
    GaussianAttack as GaussianAttack,
)
from fedsim.config.system import (
    LabelFlipAttack as LabelFlipAttack,
)
from fedsim.config.system import (
    LinkCompression as LinkCompression,
)
from fedsim.config.system import (
    LognormalDist as LognormalDist,
)
from fedsim.config.system import (
    SameValueAttack as SameValueAttack,
)
from fedsim.config.system import (
    ScaleAttack as ScaleAttack,
)
from fedsim.config.system import (
    SignFlipAttack as SignFlipAttack,
)
from fedsim.config.system import (
    SystemConfig as SystemConfig,
)
from fedsim.config.system import (
    TraceDist as TraceDist,
)
from fedsim.config.system import (
    UniformDist as UniformDist,
)

# ----------------------------------------------------------------------- scenario


# A dotted module name (`mylab.strategies`): what `plugins` may list.
_MODULE_NAME = r"^[^\W\d]\w*(\.[^\W\d]\w*)*$"


class Scenario(Section):
    """A whole experiment. See ``docs/scenarios.md`` for every key."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")]
    seed: int = 0
    rounds: Annotated[int, Field(ge=1, le=100_000)] = 10
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    client: ClientConfig = Field(default_factory=ClientConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    system: SystemConfig = Field(default_factory=SystemConfig)
    compression: CompressionConfig = Field(default_factory=CompressionConfig)
    engine: EngineConfig = Field(default_factory=InProcessEngine)
    output: OutputConfig = Field(default_factory=OutputConfig)
    plugins: list[Annotated[str, Field(pattern=_MODULE_NAME)]] = Field(
        default_factory=list,
        description="modules imported before names are resolved, in every process",
    )
    seeds: Annotated[list[int], Field(min_length=1)] | None = None
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # A grid: dotted key -> values; every combination becomes a variant (x each variant).
    sweep: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(default_factory=dict)
    variant: str | None = Field(default=None, description="set by expansion; not user-facing")

    @field_validator("engine", mode="before")
    @classmethod
    def _engine_shorthand(cls, value: Any) -> Any:
        # ``engine: ray`` and a section without ``name`` (the default engine's keys).
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict) and "name" not in value:
            return {"name": "inprocess", **value}
        return value

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name in value:
            if not name or not all(c.isalnum() or c in "._-" for c in name):
                raise ValueError(f"variant name '{name}' may use letters, digits, '.', '_', '-'")
        return value

    @property
    def is_expanded(self) -> bool:
        """Whether this is one concrete run (no ``seeds`` list, ``variants`` or ``sweep``)."""
        return self.seeds is None and not self.variants and not self.sweep
