"""The spreadout regularizer on class embeddings (FedAwS's server step).

``reg(W) = Σ_c Σ_{c'≠c} max(0, ν - d(w_c, w_c'))²`` pushes apart every pair of class
rows closer than the margin ``ν``; pairs that already meet it contribute neither loss
nor gradient. With ``top_k`` only the ``k`` nearest other classes of each class count
(Yu et al. 2020 use this to keep the cost down for many classes); ``k = C - 1`` is the
full sum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from fedsim.registry import Registry


@dataclass(frozen=True)
class Distance:
    """A pairwise distance between class rows and the margin that makes rows orthogonal.

    Attributes
    ----------
    pairwise : callable
        ``(C, d)`` rows to the ``(C, C)`` matrix of distances.
    orthogonal_margin : float
        The distance of two orthogonal unit rows: the default margin, so the
        regularizer stops pushing once classes are at least orthogonal.
    """

    pairwise: Callable[[torch.Tensor], torch.Tensor]
    orthogonal_margin: float


def _sqeuclid(w: torch.Tensor) -> torch.Tensor:
    # Explicit differences, not cdist: cdist's gradient is NaN on the zero diagonal.
    return (w[:, None, :] - w[None, :, :]).pow(2).sum(-1)


def _cosine(w: torch.Tensor) -> torch.Tensor:
    u = F.normalize(w, dim=1)
    return 1.0 - u @ u.T


DISTANCES: Registry[Distance] = Registry("spreadout distances")
DISTANCES.add("sqeuclid", Distance(_sqeuclid, 2.0), help="squared Euclidean ||w_c - w_c'||^2")
DISTANCES.add("cosine", Distance(_cosine, 1.0), help="cosine distance 1 - cos(w_c, w_c')")


def pair_mask(dist: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Boolean (C, C) mask of the pairs (c, c') the regularizer sums over.

    Every ordered pair of distinct classes, or per class ``c`` only its ``top_k``
    nearest others.
    """
    c = dist.shape[0]
    off_diagonal = ~torch.eye(c, dtype=torch.bool, device=dist.device)
    if top_k is None or top_k >= c - 1:
        return off_diagonal
    masked = dist.detach().masked_fill(~off_diagonal, float("inf"))
    nearest = masked.topk(top_k, dim=1, largest=False).indices
    mask = torch.zeros_like(off_diagonal)
    mask.scatter_(1, nearest, True)
    return mask


def spreadout_loss(
    w: torch.Tensor, margin: float, distance: str = "sqeuclid", top_k: int | None = None
) -> torch.Tensor:
    """``Σ_{(c, c') in pairs} max(0, margin - d(w_c, w_c'))²`` (differentiable in ``w``)."""
    dist = DISTANCES.get(distance).pairwise(w)
    hinge = torch.relu(margin - dist).pow(2)
    return hinge[pair_mask(dist, top_k)].sum()


def spreadout_steps(
    embeddings: NDArray[np.floating],
    *,
    steps: int,
    step_size: float,
    margin: float,
    distance: str = "sqeuclid",
    top_k: int | None = None,
) -> NDArray[np.float32]:
    """Take ``steps`` gradient steps of size ``step_size`` on the regularizer.

    Computed in float64 (the matrix is C x d, tiny); returns float32 rows, not
    renormalised (the caller decides).
    """
    w = torch.tensor(np.asarray(embeddings), dtype=torch.float64, requires_grad=True)
    for _ in range(steps):
        loss = spreadout_loss(w, margin, distance, top_k)
        (grad,) = torch.autograd.grad(loss, w)
        with torch.no_grad():
            w -= step_size * grad
    return w.detach().numpy().astype(np.float32)


def normalize_rows(embeddings: NDArray[np.floating]) -> NDArray[np.float32]:
    """Scale every row to unit length (all-zero rows stay zero)."""
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    out: NDArray[np.float32] = (embeddings / np.maximum(norms, 1e-12)).astype(np.float32)
    return out
