"""One forward/backward pass that records what each kernel needs.

Parameters of hook-served layers are frozen for the pass (so autograd computes only
activation gradients, never an unclipped weight gradient), and each layer's output is
made to require grad if nothing upstream did, so its output gradient still arrives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from fedsim.kernels.fallback import FALLBACK
from fedsim.kernels.registry import KERNELS, UNSUPPORTED, Kernel, Record, UnsupportedModuleError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def trainable_layers(model: nn.Module) -> list[tuple[str, nn.Module, Kernel]]:
    """Every module holding trainable parameters of its own, with its kernel.

    Raises
    ------
    UnsupportedModuleError
        For batch-coupled layers (BatchNorm), parameters shared between modules, or a
        module with parameters of its own and parametrised children under a fallback.
    """
    layers: list[tuple[str, nn.Module, Kernel]] = []
    owner: dict[int, str] = {}
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        path = name or "<root>"
        if isinstance(module, UNSUPPORTED):
            raise UnsupportedModuleError(
                f"{path} ({type(module).__name__}) mixes examples within a batch; per-example "
                "gradients are undefined (use GroupNorm or LayerNorm)"
            )
        for p in own:
            if id(p) in owner:
                raise UnsupportedModuleError(
                    f"{path} shares a parameter with {owner[id(p)]} "
                    "(tied weights are not supported)"
                )
            owner[id(p)] = path
        kernel = KERNELS.get(type(module))
        if kernel is None or not kernel.supports(module):
            if any(True for c in module.children() for _ in c.parameters()):
                raise UnsupportedModuleError(
                    f"{path} ({type(module).__name__}) has parameters of its own and "
                    "parametrised children; register a kernel for it"
                )
            kernel = FALLBACK
        layers.append((path, module, kernel))
    return layers


@contextmanager
def capturing(layers: list[tuple[str, nn.Module, Kernel]]) -> Iterator[dict[str, Record]]:
    """Record inputs and output gradients of every hook-served layer while active."""
    records: dict[str, Record] = {path: Record() for path, _, _ in layers}
    handles: list[Any] = []
    frozen: list[nn.Parameter] = []

    def hook_for(record: Record) -> Callable[[nn.Module, tuple[Any, ...], Any], Any]:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> Any:
            if not isinstance(output, torch.Tensor):
                raise UnsupportedModuleError(f"{type(module).__name__} returns a non-tensor")
            call = len(record.inputs)
            record.inputs.append(
                tuple(x.detach() if isinstance(x, torch.Tensor) else x for x in inputs)
            )
            # Placeholder until the gradient arrives; a call whose output gets none
            # contributes nothing (filled with zeros after the backward pass).
            record.grads.append(output.new_zeros(0).expand(0))
            record.cache.setdefault("out_shapes", []).append(output.shape)
            if not output.requires_grad:
                # Nothing upstream needs a gradient (the first layer): start the graph here.
                output = output.detach().requires_grad_(True)

            def keep(g: torch.Tensor) -> None:
                record.grads[call] = g.detach()

            output.register_hook(keep)
            return output

        return hook

    try:
        for path, module, kernel in layers:
            if kernel.captures_itself:
                module.dp_capture = records[path]  # type: ignore[assignment]
                continue
            for p in module.parameters(recurse=False):
                if p.requires_grad:
                    p.requires_grad_(False)
                    frozen.append(p)
            handles.append(module.register_forward_hook(hook_for(records[path])))
        yield records
    finally:
        for h in handles:
            h.remove()
        for p in frozen:
            p.requires_grad_(True)
        for _, module, kernel in layers:
            if kernel.captures_itself:
                module.dp_capture = None  # type: ignore[assignment]


def backprop_per_example(
    model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[list[tuple[str, nn.Module, Kernel]], dict[str, Record], torch.Tensor]:
    """Run the pass; return the layers, their records and the per-example losses (B,)."""
    layers = trainable_layers(model)
    with capturing(layers) as records:
        losses = loss_fn(model(inputs), targets)
        if losses.dim() != 1 or losses.shape[0] != inputs.shape[0]:
            raise ValueError(
                f"loss_fn must return one loss per example (reduction='none'), got shape "
                f"{tuple(losses.shape)} for a batch of {inputs.shape[0]}"
            )
        losses.sum().backward()
    for record in records.values():
        shapes = record.cache.pop("out_shapes", [])
        for k, g in enumerate(record.grads):
            if g.numel() == 0 and len(shapes[k]) and shapes[k].numel():
                record.grads[k] = torch.zeros(shapes[k], dtype=g.dtype, device=g.device)
    return layers, records, losses.detach()
