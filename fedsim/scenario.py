"""The scenario schema: one frozen, validated description of an experiment.

Every section is a frozen pydantic model with ``extra="forbid"``, so a typo is an
error that names its key. Components receive only their own section. Loading from
YAML, ``--set`` overrides and variant expansion live in :mod:`fedsim.scenario_loading`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    """Base of every scenario section: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


PositiveFloat = Annotated[float, Field(gt=0)]
Probability = Annotated[float, Field(ge=0, le=1)]


# --------------------------------------------------------------------------- data


class DigitsDataset(Section):
    """scikit-learn's 1,797 handwritten digits (8x8 grey images, 10 classes)."""

    name: Literal["digits"] = "digits"


class Mnist1dDataset(Section):
    """MNIST-1D, generated locally by the ``mnist1d`` package (40-step sequences)."""

    name: Literal["mnist1d"] = "mnist1d"
    num_samples: Annotated[int, Field(ge=100, description="samples generated in total")] = 5000


class TextDataset(Section):
    """Character-level text: Python's own reference docs (``pydoc_data``), offline.

    Sequences of ``seq_len`` characters, each target the next character; the 79 most
    frequent characters plus one unknown symbol form an 80-symbol vocabulary (the LEAF
    Shakespeare shape). The last ``test_fraction`` of the text (not a random sample)
    is the held-out test set.
    """

    name: Literal["text"] = "text"
    seq_len: Annotated[int, Field(ge=2, le=10_000)] = 80
    max_chars: Annotated[int, Field(ge=1_000)] = 200_000
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1


class NpzDataset(Section):
    """A local ``.npz`` file with arrays ``x`` and ``y`` (optionally ``x_test``, ``y_test``)."""

    name: Literal["npz"] = "npz"
    path: str
    # classes: y holds labels 0..C-1; values: y holds real regression targets.
    targets: Literal["classes", "values"] = "classes"


class RegressionDataset(Section):
    """Synthetic linear regression: ``y = x·w* + b* + noise``, generated from ``seed``.

    Features are Gaussian with standard deviations spread log-uniformly from 1 down to
    ``1 / sqrt(condition)`` (so ``XᵀX/N`` has condition number about ``condition``).
    """

    name: Literal["regression"] = "regression"
    num_samples: Annotated[int, Field(ge=10, le=10_000_000)] = 2000
    num_features: Annotated[int, Field(ge=1, le=10_000)] = 40
    noise: Annotated[float, Field(ge=0)] = 0.1
    condition: Annotated[float, Field(ge=1)] = 100.0
    seed: int = 0


class HubDataset(Section):
    """A Hugging Face dataset: a local copy (``save_to_disk``, parquet, arrow) or a Hub name."""

    name: Literal["hf"] = "hf"
    path: str = Field(
        description="local folder or file (save_to_disk, parquet, arrow), or a Hub name"
    )
    image_key: str = Field(default="image", description="the feature column (any array)")
    label_key: str = "label"
    train_split: str = "train"
    test_split: str | None = Field(
        default="test", description="null: carve the test set by data.test_fraction"
    )
    client_id_key: str | None = Field(
        default=None, description="a column of natural ids, for partitioner natural"
    )


class LeafDataset(Section):
    """A LEAF benchmark dataset from its JSON files (``train/`` and ``test/`` folders).

    Every example keeps its LEAF user as its client id (the ``natural`` partitioner).
    """

    name: Literal["leaf"] = "leaf"
    path: str = Field(description="LEAF's data/<task>/data folder (holding train/, test/)")
    task: Literal["femnist", "shakespeare", "sent140"]
    vocab: str | None = Field(
        default=None, description="sent140: vocabulary file, one token per line"
    )
    seq_len: Annotated[int, Field(ge=1, le=10_000)] = Field(
        default=25, description="sent140: tokens per example (truncated or padded)"
    )


class CifarDataset(Section):
    """CIFAR-10 or CIFAR-100 from the standard Python batches in a local folder."""

    name: Literal["cifar"] = "cifar"
    path: str = Field(description="cifar-10-batches-py/ or cifar-100-python/ folder")
    labels: Literal["fine", "coarse"] = Field(
        default="fine", description="CIFAR-100: the 100 fine or the 20 coarse classes"
    )


DatasetConfig = Annotated[
    DigitsDataset
    | Mnist1dDataset
    | TextDataset
    | NpzDataset
    | HubDataset
    | LeafDataset
    | CifarDataset
    | RegressionDataset,
    Field(discriminator="name"),
]


def has_regression_targets(dataset: DatasetConfig) -> bool:
    """Whether the dataset's targets are real values (least squares), not class labels."""
    return isinstance(dataset, RegressionDataset) or (
        isinstance(dataset, NpzDataset) and dataset.targets == "values"
    )


class IidPartitioner(Section):
    """Uniformly random, equal-sized partitions."""

    name: Literal["iid"] = "iid"


class DirichletPartitioner(Section):
    """Label proportions per client drawn from Dirichlet(alpha)."""

    name: Literal["dirichlet"] = "dirichlet"
    alpha: PositiveFloat = 0.5
    min_partition_size: Annotated[int, Field(ge=0)] = 2
    self_balancing: bool = False


class PathologicalPartitioner(Section):
    """Each client holds a fixed number of classes.

    ``class_assignment`` is flwr-datasets' mode: ``first-deterministic`` (default) gives
    client k class ``k mod C`` first and the rest at random, so every class reaches some
    client whenever there are at least as many clients as classes; ``random`` may leave
    classes with no client; ``deterministic`` gives client k classes k, k+1, ... mod C.
    """

    name: Literal["pathological"] = "pathological"
    classes_per_client: Annotated[int, Field(ge=1)] = 2
    class_assignment: Literal["first-deterministic", "random", "deterministic"] = (
        "first-deterministic"
    )


class ShardsPartitioner(Section):
    """Sort by label, cut into shards, deal each client a number of shards."""

    name: Literal["shards"] = "shards"
    shards_per_client: Annotated[int, Field(ge=1)] = 2


class ContiguousPartitioner(Section):
    """Client k gets the k-th contiguous block of examples, in dataset order."""

    name: Literal["contiguous"] = "contiguous"


class OneClassPartitioner(Section):
    """Each client holds exactly one label (clients of one label split its data)."""

    name: Literal["one-class"] = "one-class"


class NaturalPartitioner(Section):
    """One client per natural id (writer, speaker, user) of a per-example ``client_id``.

    With ``data.num_clients`` omitted there is one client per id; a smaller number
    takes a seeded sample of the ids.
    """

    name: Literal["natural"] = "natural"


PartitionerConfig = Annotated[
    IidPartitioner
    | DirichletPartitioner
    | PathologicalPartitioner
    | ShardsPartitioner
    | ContiguousPartitioner
    | OneClassPartitioner
    | NaturalPartitioner,
    Field(discriminator="name"),
]


def _name_shorthand(value: Any) -> Any:
    """Accept ``"digits"`` or ``"npz:PATH"`` where a mapping with ``name`` is expected."""
    if isinstance(value, str):
        prefix, sep, rest = value.partition(":")
        if sep and prefix in ("npz", "hf"):
            return {"name": prefix, "path": rest}
        return {"name": value}
    return value


class SharingConfig(Section):
    """AGC's offline phase: non-private examples copied to other clients before training.

    Each client marks a share ``c`` of its examples non-private; each of those goes to
    ``d - 1`` other clients, so ``d`` clients (the owner included) hold it. A node's data
    is then its private examples plus every non-private example it holds.
    """

    c: Annotated[Probability, Field(description="share of each client's data non-private")] = 0.1
    d: Annotated[int, Field(ge=1, description="clients holding each non-private example")] = 2


class LabelNoiseConfig(Section):
    """Noisy training labels: within each class a share ``rate`` is flipped (seeded).

    ``symmetric``: to a uniformly drawn other class; ``pairflip``: class ``c`` to
    ``c + 1 mod C``; ``matrix``: row ``c`` of ``matrix`` (C x C, rows summing to 1) is
    the share of class ``c`` sent to each class (``rate`` is then unused). Test labels
    are never touched.
    """

    rate: Probability = 0.2
    kind: Literal["symmetric", "pairflip", "matrix"] = "symmetric"
    matrix: list[list[Annotated[float, Field(ge=0, le=1)]]] | None = None

    @model_validator(mode="after")
    def _matrix_given(self) -> LabelNoiseConfig:
        if (self.kind == "matrix") != (self.matrix is not None):
            raise ValueError("give 'matrix' exactly when kind is 'matrix'")
        rows = self.matrix or []
        if any(len(row) != len(rows) or abs(sum(row) - 1.0) > 1e-6 for row in rows):
            raise ValueError("matrix must be square with every row summing to 1")
        return self


class MomentEncodingConfig(Section):
    """LDPC moment encoding's offline phase (Maity et al.): coded blocks of ``[XᵀX | Xᵀy]``.

    The rows of the second moment of all training data (bias column included) are cut
    into ``k`` blocks and encoded over the ``num_clients`` clients: ``ldpc`` (a random
    ``(column_weight, row_weight)``-regular code, ``k = n - rank(H)``), ``replication``
    (each block on ``replicas`` clients, ``k = n / replicas``) or ``uncoded``
    (``k = n``). Each client then holds one coded block.
    """

    code: Literal["ldpc", "replication", "uncoded"] = "ldpc"
    column_weight: Annotated[int, Field(ge=1)] = 3
    row_weight: Annotated[int, Field(ge=2)] = 6
    replicas: Annotated[int, Field(ge=1)] = 2


class DataConfig(Section):
    """Where the data comes from and how it is split over clients."""

    dataset: DatasetConfig = Field(default_factory=DigitsDataset)
    # Omitted with the natural partitioner: one client per id (scenario loading counts).
    num_clients: Annotated[int, Field(ge=1, le=1_000_000)] = 10
    partitioner: PartitionerConfig = Field(default_factory=IidPartitioner)
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    sharing: SharingConfig | None = None
    label_noise: LabelNoiseConfig | None = None
    moment_encoding: MomentEncodingConfig | None = None

    @field_validator("dataset", "partitioner", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return _name_shorthand(value)


# -------------------------------------------------------------------------- model


class ModelConfig(Section):
    """A registered model name (or ``pkg.module:factory``) and its keyword parameters."""

    name: str = "mlp"
    params: dict[str, Any] = Field(default_factory=dict)


# ------------------------------------------------------------------------- client


class OptimizerConfig(Section):
    """The client's local optimizer."""

    name: Literal["sgd", "adam"] = "sgd"
    lr: Annotated[float, Field(ge=0)] = 0.05  # 0 freezes local training (averaging alone)
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    weight_decay: Annotated[float, Field(ge=0)] = 0.0


RGP_RANK = 8  # client.dp.rank when mode is rgp and rank is not given
RGP_POWER_ITERATIONS = 1  # client.dp.power_iterations likewise


class DPConfig(Section):
    """Differentially private local training (DP-SGD) on each client."""

    noise_multiplier: Annotated[float, Field(ge=0)] = 1.0
    max_grad_norm: PositiveFloat = 1.0
    delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    sampling: Literal["poisson", "fixed"] = "poisson"
    mode: Literal["fast", "opacus-hooks", "opacus-ghost", "naive", "rgp"] = "fast"
    # Mode rgp only (None: its defaults, RGP_RANK and RGP_POWER_ITERATIONS).
    rank: Annotated[int, Field(ge=1)] | None = None  # the gradient carriers' rank r
    power_iterations: Annotated[int, Field(ge=0)] | None = None  # power-method rounds

    @model_validator(mode="after")
    def _rgp_keys(self) -> DPConfig:
        given = [k for k in ("rank", "power_iterations") if getattr(self, k) is not None]
        if self.mode != "rgp" and given:
            raise ValueError(f"{', '.join(given)}: read by mode 'rgp' only (mode is {self.mode!r})")
        return self


class LowPrecisionWeights(Section):
    """The client's model kept in fixed point during local training (Golovin et al. 2013).

    Every weight is a multiple of ``step`` with a ``bits``-bit signed integer
    (``[-2^(bits-1), 2^(bits-1) - 1] * step``), rounded after every optimizer step.
    """

    bits: Annotated[int, Field(ge=2, le=16)] = 16
    step: PositiveFloat = 2.0**-13  # q2.13 at 16 bits, the paper's encoding
    rounding: Literal["randomized-rounding", "deterministic-rounding"] = "randomized-rounding"


class CrossEntropyLoss(Section):
    """The plain cross-entropy (the default)."""

    name: Literal["cross_entropy"] = "cross_entropy"


class LogitAdjustedLoss(Section):
    """Cross-entropy of the logits plus ``tau * log(prior)`` (Menon et al. 2021).

    ``prior: own`` is the client's own label frequencies (the label-skewed FL case),
    ``global`` the frequencies over every client's training labels. ``tau = 0`` is the
    plain cross-entropy.
    """

    name: Literal["logit_adjusted"] = "logit_adjusted"
    tau: Annotated[float, Field(ge=0)] = 1.0
    prior: Literal["own", "global"] = "own"


class LabelSmoothingLoss(Section):
    """Cross-entropy against ``(1 - epsilon) * one-hot + epsilon * uniform``."""

    name: Literal["label_smoothing"] = "label_smoothing"
    epsilon: Annotated[float, Field(ge=0, le=1)] = 0.1


class EntropyRegularisedLoss(Section):
    """Cross-entropy minus ``beta`` times the entropy of the prediction (confidence penalty)."""

    name: Literal["entropy_regularised"] = "entropy_regularised"
    beta: Annotated[float, Field(ge=0)] = 0.1


class SquaredErrorLoss(Section):
    """Half the squared error of a one-output model: regression targets (``model: linear``)."""

    name: Literal["squared_error"] = "squared_error"


LossConfig = Annotated[
    CrossEntropyLoss
    | LogitAdjustedLoss
    | LabelSmoothingLoss
    | EntropyRegularisedLoss
    | SquaredErrorLoss,
    Field(discriminator="name"),
]


class ClientConfig(Section):
    """Local training on each client."""

    local_epochs: Annotated[int, Field(ge=1)] = 1
    local_steps: Annotated[int | None, Field(ge=1)] = None
    batch_size: Annotated[int, Field(ge=1)] = 32
    eval_batch_size: Annotated[int, Field(ge=1)] = 512
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    dp: DPConfig | None = None
    weights: LowPrecisionWeights | None = None
    # The per-example training loss (clients/losses.py); every one works under DP-SGD.
    loss: LossConfig = Field(default_factory=CrossEntropyLoss)

    @field_validator("loss", mode="before")
    @classmethod
    def _loss_shorthand(cls, value: Any) -> Any:
        return _name_shorthand(value)


# ----------------------------------------------------------------------- strategy


class StrategyConfig(Section):
    """A registered strategy name (or ``pkg.module:Class``) and its keyword parameters."""

    name: str = "fedavg"
    params: dict[str, Any] = Field(default_factory=dict)


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


def _number_shorthand(value: Any) -> Any:
    """Accept a bare number where a distribution is expected (a constant)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {"distribution": "constant", "value": value}
    return value


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
        return _name_shorthand(value)

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
        return _number_shorthand(value)


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
    # Where clients train: auto (CUDA when present, else CPU) | cpu | cuda | cuda:N | mps,
    # or a list of them that worker processes take in turn ([cuda:0, cuda:1]).
    device: str | Annotated[list[str], Field(min_length=1)] = "auto"
    # torch.set_num_threads in every process that trains (with another process on a
    # core, two threads made small updates 20-60x slower; one thread was unaffected).
    threads_per_worker: Annotated[int, Field(ge=1)] = 1
    # Whether the engine's grid can save and restore every node's state
    # (``output.checkpoint_every``, ``fedsim run --resume``).
    resumable: ClassVar[bool] = False

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
    # Processes that run the clients: 1 = this process (no IPC); N long-lived worker
    # processes, nodes pinned to one; auto = physical cores // threads_per_worker.
    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = 1
    # Train up to this many of a dispatch's clients together in one stacked computation
    # (0: one by one; with workers, each worker its own nodes'). Replies equal the
    # one-by-one ones up to float rounding, not bit for bit, so it is off by default.
    batch_clients: Annotated[int, Field(ge=0)] = 0

    @field_validator("workers", mode="before")
    @classmethod
    def _workers_choice(cls, value: Any) -> Any:
        # One message for the union (pydantic would report each alternative).
        if value == "auto" or (
            isinstance(value, int) and not isinstance(value, bool) and value >= 1
        ):
            return value
        raise ValueError("must be a whole number >= 1 or 'auto'")


class RayEngine(_EngineSection):
    """Flower's Ray simulation engine (``fedsim[ray]``): a local Ray or a cluster."""

    name: Literal["ray"] = "ray"
    client_resources: ClientResources = Field(default_factory=ClientResources)
    num_cpus: Annotated[int, Field(ge=1)] | None = None
    object_store_mb: Annotated[int, Field(ge=80)] = 512
    ray_address: str | None = None


EngineConfig = Annotated[InProcessEngine | RayEngine, Field(discriminator="name")]
ENGINE_SECTIONS: tuple[type[_EngineSection], ...] = (InProcessEngine, RayEngine)


class CallbackEntry(Section):
    """One ``output.callbacks`` entry with parameters: ``{name, params}``."""

    name: Annotated[str, Field(min_length=1)]
    params: dict[str, Any] = Field(default_factory=dict)


PlotFormat = Literal["png", "svg", "pdf"]


class OutputConfig(Section):
    """What a run writes."""

    dir: str | None = None
    # An existing run directory: false -> an error (or a numbered sibling for the default
    # runs/<name>-<time>), true -> its old run is removed and this run takes its place.
    overwrite: bool = False
    target_accuracy: Annotated[float, Field(gt=0, le=1)] | None = None
    evaluate_every: Annotated[int, Field(ge=1)] = 1
    plots: bool = True
    plot_formats: Annotated[list[PlotFormat], Field(min_length=1)] = Field(
        default_factory=lambda: list[PlotFormat](["png"])
    )
    checkpoint_every: Annotated[int, Field(ge=1)] | None = None
    # The global model on each client's own test split (natural partitions with test ids).
    per_client_eval: bool = False
    # Per-class recall of central evaluation (eval_recall, eval_recall_min per round).
    class_recall: bool = False
    # Post-hoc logit adjustment of central evaluation: logits - tau * log(global prior).
    eval_logit_adjust: Annotated[float, Field(ge=0)] | None = None
    # Experiment trackers (fedsim.outputs.trackers): csv, tensorboard, wandb, mlflow.
    trackers: list[str] = Field(default_factory=lambda: ["csv"])
    # Callbacks by registry name or pkg.module:Class, or {name, params}.
    callbacks: list[str | CallbackEntry] = Field(default_factory=list)
    # The variant every other variant is compared with (paired test over seeds).
    baseline: str | None = None


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
