"""A class-embedding head with cosine logits, on any registered backbone.

FedAwS (Yu et al., ICML 2020) needs the classifier's last layer to be an explicit
matrix of class embeddings ``W`` (C x d) that the server can hold apart from the rest of
the model: logits are the cosine similarities between the normalised feature
``g_θ(x)`` and the normalised rows of ``W``, times a fixed scale (a softmax over raw
cosines in [-1, 1] is too flat to train with cross-entropy).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.errors import UnknownNameError
from fedsim.models import MODELS

# The state-dict key of the class-embedding matrix (FedAwS's server keeps it).
EMBEDDINGS_KEY = "class_embeddings"


class CosineClassifier(nn.Module):
    """``scale · cos(g_θ(x), w_c)`` for every class ``c``.

    Parameters
    ----------
    backbone : nn.Module
        Maps a batch to ``(B, embedding_dim)`` features ``g_θ(x)``.
    num_classes : int
        Rows of ``class_embeddings``.
    embedding_dim : int
        Width of the features and of each class embedding.
    scale : float
        Multiplies the cosines to make the logits (the inverse softmax temperature).
    """

    def __init__(
        self, backbone: nn.Module, num_classes: int, embedding_dim: int, scale: float
    ) -> None:
        super().__init__()
        self.backbone = backbone
        # Unit-norm random rows: the same start FedAwS's server renormalises to.
        self.class_embeddings = nn.Parameter(
            F.normalize(torch.randn(num_classes, embedding_dim), dim=1)
        )
        self.scale = scale

    def cosines(self, x: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each example's feature with each class row, (B, C)."""
        features = F.normalize(self.backbone(x), dim=1)
        return features @ F.normalize(self.class_embeddings, dim=1).T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled cosine logits, (B, C)."""
        return self.scale * self.cosines(x)

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        """``embedding_mean_cosine``: mean cosine between distinct class rows.

        Near 1 means the embeddings collapsed to one direction (every class looks the
        same); near ``-1/(C-1)`` means maximally spread out.
        """
        return {"embedding_mean_cosine": mean_offdiagonal_cosine(self.class_embeddings)}


def mean_offdiagonal_cosine(embeddings: torch.Tensor) -> float:
    """Mean cosine similarity over ordered pairs of distinct rows."""
    w = F.normalize(embeddings.detach().double(), dim=1)
    c = w.shape[0]
    if c < 2:
        return 1.0
    gram = w @ w.T
    return float((gram.sum() - gram.diagonal().sum()) / (c * (c - 1)))


@MODELS.register("cosine", help="any backbone + class-embedding head with cosine logits (FedAwS)")
def cosine(
    input_shape: tuple[int, ...],
    num_classes: int,
    backbone: str = "mlp",
    backbone_params: dict[str, Any] | None = None,
    embedding_dim: int = 32,
    scale: float = 16.0,
) -> nn.Module:
    """Build ``backbone`` with ``embedding_dim`` outputs and a cosine class head.

    Parameters
    ----------
    input_shape, num_classes
        The data's example shape and number of classes.
    backbone : str
        A registered model name; it is built with ``num_classes=embedding_dim`` so its
        output layer produces the features.
    backbone_params : dict, optional
        Keyword arguments of the backbone.
    embedding_dim : int
        Feature and class-embedding width.
    scale : float
        Logit scale (inverse softmax temperature).
    """
    if embedding_dim < 1 or scale <= 0:
        raise TypeError(f"need embedding_dim >= 1 and scale > 0, got {embedding_dim}, {scale}")
    try:
        factory = MODELS.get(backbone)
    except UnknownNameError as exc:
        raise TypeError(f"backbone: {exc}") from None  # reported under model.params
    body = factory(input_shape, embedding_dim, **(backbone_params or {}))
    return CosineClassifier(body, num_classes, embedding_dim, scale)
