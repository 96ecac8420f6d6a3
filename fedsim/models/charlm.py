"""Character-level LSTM language model (LEAF Shakespeare shape by default)."""

from __future__ import annotations

import torch
from torch import nn

from fedsim.kernels import StructuredDropoutLSTM, dense_linear, gathered_linear, structure_pays
from fedsim.models import IncompatibleDataError, register_model


class CharLM(nn.Module):
    """Embedding -> structured-dropout LSTM -> decoder over every position.

    Structured dropout (when ``dropout`` > 0) drops the embedding output (unless
    ``dropout_input=False``) and every layer's output, each with a mask shared by the
    batch and redrawn at every time step.

    In training with structured dropout, where :func:`~fedsim.kernels.structure_pays`
    says gathering pays for the device, batch, hidden size and drop rate, the decoder
    reads only the kept units of each step (:func:`~fedsim.kernels.gathered_linear`),
    so its forward and backward GEMMs shrink with the keep ratio too; elsewhere it is
    the dense decoder on the dropped output, what ``nn.Dropout`` + ``nn.Linear`` do,
    computed by :func:`~fedsim.kernels.dense_linear` (the same GEMMs on faster routes).
    Logits are (B, V, T) (time major (T, B, V) with ``time_major=True``), ready for a
    cross-entropy against (B, T) targets.
    """

    def __init__(
        self,
        vocab: int,
        embed: int = 8,
        hidden: int = 256,
        num_layers: int = 2,
        dropout: float = 0.0,
        per_element: bool = False,
        time_major: bool = False,
        dropout_input: bool = True,
    ) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, embed)
        self.lstm = StructuredDropoutLSTM(
            embed, hidden, num_layers, dropout, per_element=per_element, dropout_input=dropout_input
        )
        self.dec = nn.Linear(hidden, vocab)
        # The decoder's weight keeps nn.Linear's shape, name and values but lives
        # transposed in memory, one row per hidden unit: the gathered decoder then reads
        # the kept units' rows without copying the weight first, and both decoder routes'
        # weight gradients come out in that layout, so autograd keeps them instead of
        # copying each into the weight's (about 35 ms a PTB-medium step, together).
        self.dec.weight = nn.Parameter(self.dec.weight.detach().t().contiguous().t())
        self.time_major = time_major

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for next-token prediction at every position of ``x`` (B, T)."""
        out, _ = self.lstm(self.emb(x))  # (B, T, H), dropped units are zero
        masks = self.lstm.last_masks
        lstm = self.lstm
        gather = not lstm.per_element and structure_pays(
            x.device.type, x.shape[0], lstm.hidden_size, lstm.dropout
        )
        logits: torch.Tensor
        if self.lstm.dp_capture is not None:  # a DP pass: the decoder's kernel needs its hook
            logits = self.dec(out).transpose(0, 1)
        elif masks is not None and gather:
            logits = gathered_linear(out, masks[-1], self.dec.weight, self.dec.bias)  # (T, B, V)
        else:  # eval, per-element dropout, or where gathering does not pay: time major
            # rows, so the (T, B, V) logits need no copy, and faster-oriented GEMMs
            logits = dense_linear(out.transpose(0, 1), self.dec.weight, self.dec.bias)
        return logits if self.time_major else logits.permute(1, 2, 0)


@register_model(
    "charlm", inputs="(T,) token ids below the vocabulary size (80: text, leaf shakespeare)"
)
def charlm(
    input_shape: tuple[int, ...],
    num_classes: int,
    embed: int = 8,
    hidden: int = 256,
    num_layers: int = 2,
    dropout: float = 0.0,
    per_element: bool = False,
    dropout_input: bool = True,
) -> nn.Module:
    """Character LSTM LM for token sequences (T,); ``num_classes`` is the vocabulary.

    ``dropout`` drops every LSTM layer's output and, with ``dropout_input`` (default, as
    in Zaremba et al. and the structured-dropout paper), the embedding output too.
    """
    if len(input_shape) != 1:
        raise IncompatibleDataError(
            f"'charlm' needs token sequences of shape (T,), got {input_shape}"
        )
    return CharLM(
        num_classes, embed, hidden, num_layers, dropout, per_element, dropout_input=dropout_input
    )
