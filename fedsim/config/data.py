"""The ``data`` section: dataset, partitioner, sharing plan, label noise, moment coding."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from fedsim.config.section import (
    PositiveFloat,
    Probability,
    Section,
    name_shorthand,
)

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
        return name_shorthand(value)
