"""Memory layout of networks and tensors: kuosan's UNet computes in ``channels_last``."""

from __future__ import annotations

import torch

__all__ = ["prepare_model", "to_channels_last"]


def prepare_model(model, channels_last: bool = True, compile: bool = False):
    """Put ``model``'s layout-aware networks in ``channels_last`` (and optionally compile it), in place.

    kuosan's UNet computes in the layout of its weights (``UNet.memory_format``), so this is all that
    training and sampling need: inputs may stay NCHW (the network converts its input, and returns the
    output in the input's layout). Only submodules that declare ``computes_in_weight_layout`` are
    converted (a UNet inside a preconditioner, say); others (DiT, autoencoders) are left as they are.
    Parameter names, values and state-dict keys are unchanged, and ``load_state_dict`` keeps the
    layout. ``channels_last=False`` converts back to NCHW. ``compile=True`` uses ``nn.Module.compile``
    (keys unchanged too); measure first: on this 2-core CPU it compiled for minutes and then ran
    slower than eager (benchmarks/results/peers_compile.json). Returns ``model``.
    """
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for module in model.modules():
        if getattr(module, "computes_in_weight_layout", False):
            module.to(memory_format=fmt)
    if compile:
        model.compile()
    return model


def to_channels_last(x):
    """A 4-D tensor in ``channels_last`` layout (a copy only if it is not already); others unchanged."""
    if getattr(x, "ndim", 0) == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
