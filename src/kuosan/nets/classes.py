"""Class embeddings: resize a network's classes (fine-tuning to another data set, LoRA adapters trained
with another class count). Known classes keep their rows; the null class (for guidance) stays last."""

from __future__ import annotations

import torch
from torch import nn

from kuosan.nets.layers import NoiseEmbedding

__all__ = ["class_embeddings", "resize_class_rows", "resize_classes"]


def class_embeddings(model: nn.Module) -> dict[str, nn.Module]:
    """Every class embedding of ``model``, by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, NoiseEmbedding)}


def resize_class_rows(weight: torch.Tensor | None, old: int, new: int, dim: int,
                      sources: list[int] | None = None) -> torch.Tensor:
    """Class-embedding rows for ``new`` classes + null from those of ``old`` classes + null (the last
    row): known classes kept, null moved to the new last index, new classes copied from null.
    ``weight`` None (an unconditional parent) gives zeros: every class starts as the parent.
    ``sources``: for each new class, the old class whose row it starts from instead (finer labels inside
    the parent's classes: every subcategory of "animals" starts as "animals")."""
    if weight is None or old == 0:
        return torch.zeros(new + 1, dim)
    null = weight[old]
    rows = null.expand(new + 1, dim).clone()
    if sources is not None:
        if len(sources) != new or not all(0 <= int(k) < old for k in sources):
            raise ValueError(f"sources needs {new} class indices below {old}")
        rows[:new] = weight[torch.as_tensor([int(k) for k in sources], dtype=torch.long)]
        return rows
    k = min(old, new)
    rows[:k] = weight[:k]
    return rows


@torch.no_grad()
def resize_classes(model: nn.Module, num_classes: int) -> int | None:
    """Resize every class embedding of ``model`` in place to ``num_classes`` (+ null), the way
    fine-tuning does; returns the previous count (None when the model has no class input). A network
    with an ``adopt_classes(num_classes)`` method (diffusers' UNet) resizes itself; it returns
    ``NotImplemented`` to fall back to the class embeddings."""
    for module in model.modules():  # a network that resizes its own classes (another library's UNet)
        adopt = getattr(module, "adopt_classes", None)
        if callable(adopt) and (old := adopt(num_classes)) is not NotImplemented:
            return old
    embeds = class_embeddings(model)
    old = None
    for emb in embeds.values():
        old = emb.num_classes
        if old == num_classes:
            continue
        weight = emb.class_emb.weight if emb.class_emb is not None else None
        dim = emb.mlp[-1].out_features
        if num_classes == 0:
            emb.mlp[-1].bias.add_(weight[old])  # the unconditional child is the parent's null class
            emb.class_emb = None
        else:
            ref = emb.mlp[-1].weight
            rows = resize_class_rows(weight, old, num_classes, dim).to(ref.device, ref.dtype)
            emb.class_emb = nn.Embedding(num_classes + 1, dim, device=ref.device, dtype=ref.dtype)
            emb.class_emb.weight.copy_(rows)
        emb.num_classes = num_classes
    return old


