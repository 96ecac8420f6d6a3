"""The ``model``, ``client`` and ``strategy`` sections."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from fedsim.config.section import (
    PositiveFloat,
    Section,
    name_shorthand,
)

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


class LossSection(Section):
    """A ``client.loss`` section: what every loss declares."""

    def dp_refusal(self) -> str | None:
        """Why ``client.dp`` cannot train on this loss (None: it can)."""
        return None


class CrossEntropyLoss(LossSection):
    """The plain cross-entropy (the default)."""

    name: Literal["cross_entropy"] = "cross_entropy"


class LogitAdjustedLoss(LossSection):
    """Cross-entropy of the logits plus ``tau * log(prior)`` (Menon et al. 2021).

    ``prior: own`` is the client's own label frequencies (the label-skewed FL case),
    ``global`` the frequencies over every client's training labels. ``tau = 0`` is the
    plain cross-entropy.
    """

    name: Literal["logit_adjusted"] = "logit_adjusted"
    tau: Annotated[float, Field(ge=0)] = 1.0
    prior: Literal["own", "global"] = "own"

    def dp_refusal(self) -> str | None:
        """Why ``client.dp`` cannot train on this loss (None: it can).

        ``prior: own`` is counted on the client's private labels: one example changes
        every example's loss (measured: 1.05 C of change in the clipped sum, where the
        accountant assumes at most C).
        """
        if self.prior != "own":
            return None
        return (
            "cannot be used with client.loss.prior: 'own' (logit_adjusted): the prior is "
            "counted on the client's private labels, so one example changes every "
            "example's loss and the DP-SGD sensitivity bound fails; use prior: 'global'"
        )


class LabelSmoothingLoss(LossSection):
    """Cross-entropy against ``(1 - epsilon) * one-hot + epsilon * uniform``."""

    name: Literal["label_smoothing"] = "label_smoothing"
    epsilon: Annotated[float, Field(ge=0, le=1)] = 0.1


class EntropyRegularisedLoss(LossSection):
    """Cross-entropy minus ``beta`` times the entropy of the prediction (confidence penalty)."""

    name: Literal["entropy_regularised"] = "entropy_regularised"
    beta: Annotated[float, Field(ge=0)] = 0.1


class SquaredErrorLoss(LossSection):
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
    # The per-example training loss (fedsim/client/losses.py); every one works under DP-SGD.
    loss: LossConfig = Field(default_factory=CrossEntropyLoss)

    @field_validator("loss", mode="before")
    @classmethod
    def _loss_shorthand(cls, value: Any) -> Any:
        return name_shorthand(value)


# ----------------------------------------------------------------------- strategy


class StrategyConfig(Section):
    """A registered strategy name (or ``pkg.module:Class``) and its keyword parameters."""

    name: str = "fedavg"
    params: dict[str, Any] = Field(default_factory=dict)
