"""nn.Embedding: ``‖g_i‖² = Σ_{t,t'} [id_t = id_t'] ⟨δ_t, δ_t'⟩`` (rows hit twice add up)."""

from __future__ import annotations

import torch
from torch import nn

from fedsim.kernels.registry import Kernel, Record, register_kernel, set_grad


@register_kernel(nn.Embedding)
class EmbeddingKernel(Kernel):
    """Token embeddings; positions holding ``padding_idx`` get no gradient, as in torch."""

    def _ad(self, module: nn.Module, record: Record) -> tuple[torch.Tensor, torch.Tensor]:
        if "ids" not in record.cache:
            assert isinstance(module, nn.Embedding)
            if module.max_norm is not None:
                raise TypeError("Embedding(max_norm=...) renormalises rows in place")
            ids = torch.cat([x[0].reshape(x[0].shape[0], -1) for x in record.inputs], 1)
            d = torch.cat([g.reshape(g.shape[0], -1, g.shape[-1]) for g in record.grads], 1)
            if module.padding_idx is not None:
                d = d * (ids != module.padding_idx).unsqueeze(-1)
            record.cache["ids"], record.cache["d"] = ids, d
        return record.cache["ids"], record.cache["d"]

    def norm_sq(self, module: nn.Module, record: Record) -> torch.Tensor:
        """Ghost norm with an id-equality kernel, (B, T, T)."""
        ids, d = self._ad(module, record)  # (B, T), (B, T, D)
        same = (ids.unsqueeze(2) == ids.unsqueeze(1)).to(d.dtype)
        return (same * torch.bmm(d, d.transpose(1, 2))).sum((1, 2))

    def accumulate(self, module: nn.Module, record: Record, coef: torch.Tensor) -> None:
        """Scatter-add the weighted output gradients into the used rows."""
        ids, d = self._ad(module, record)
        assert isinstance(module, nn.Embedding)
        grad = torch.zeros_like(module.weight)
        grad.index_add_(0, ids.reshape(-1), (d * coef.view(-1, 1, 1)).reshape(-1, d.shape[-1]))
        set_grad(module.weight, grad)
