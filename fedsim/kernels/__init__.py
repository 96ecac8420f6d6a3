"""Fast local compute: a leaf package (tensor code importing nothing else of fedsim).

- :func:`per_example_grad_norms` and :func:`clip_and_accumulate`: per-example gradient
  norms and the clipped gradient sum in one forward/backward pass, through a registry of
  per-layer kernels keyed by layer type (:func:`register_kernel`), with a ``torch.func``
  fallback for layers without one.
- :class:`LSTM`: an ``nn.LSTM``-compatible layer built so that those kernels apply, and
  :class:`StructuredDropoutLSTM` with :func:`gathered_linear` for consumers of its
  output; :func:`structure_pays` is the rule for when gathering pays, and
  :func:`dense_linear` the dense route (``F.linear`` with faster-routed GEMMs).
- :func:`mlp_cross_entropy_grad`: a plain MLP's cross-entropy gradient without autograd
  (:func:`mlp_linears` tells whether a model is one), and
  :func:`stacked_mlp_cross_entropy_grad` for many MLPs at once.
"""

from fedsim.kernels import conv, embedding, linear, norm_layers  # noqa: F401  (register kernels)
from fedsim.kernels.clipping import (
    ClipResult,
    clip_and_accumulate,
    clipped_gradient,
    per_example_grad_norms,
)
from fedsim.kernels.gathered import gathered_linear
from fedsim.kernels.gemm import dense_linear
from fedsim.kernels.lstm import LSTM, StructuredDropoutLSTM
from fedsim.kernels.mlp import (
    mlp_cross_entropy_grad,
    mlp_linears,
    stacked_mlp_cross_entropy_grad,
)
from fedsim.kernels.registry import KERNELS, Kernel, Record, UnsupportedModuleError, register_kernel
from fedsim.kernels.structure_rule import GATHER_RULES, GatherRule, structure_pays

__all__ = [
    "GATHER_RULES",
    "KERNELS",
    "LSTM",
    "ClipResult",
    "GatherRule",
    "Kernel",
    "Record",
    "StructuredDropoutLSTM",
    "UnsupportedModuleError",
    "clip_and_accumulate",
    "clipped_gradient",
    "dense_linear",
    "gathered_linear",
    "mlp_cross_entropy_grad",
    "mlp_linears",
    "per_example_grad_norms",
    "register_kernel",
    "stacked_mlp_cross_entropy_grad",
    "structure_pays",
]
