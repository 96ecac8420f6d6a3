"""Kernel tests: without a GPU, triton (if installed) runs fedsim's kernels in its
interpreter on CPU tensors. Triton reads ``TRITON_INTERPRET`` when a kernel is defined,
so it is set here, before any test imports :mod:`fedsim.kernels.triton_lstm`."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
