"""Small building blocks shared by the networks."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["timestep_embedding", "NoiseEmbedding", "zero_init", "GroupNorm32"]


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's weights so a residual branch starts as the identity (Improved DDPM §3.3; DiT)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(c_noise: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of a noise condition (Transformer, Vaswani et al. 2017, §3.5): [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=c_noise.device) / half)
    args = c_noise.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class NoiseEmbedding(nn.Module):
    """c_noise (and optionally a class) -> conditioning vector of width ``emb_dim``.

    Classes are embedded with ``num_classes + 1`` rows: the last row is the "null" class used for
    classifier-free guidance (Ho & Salimans 2022, §3.2).
    """

    def __init__(self, base_dim: int, emb_dim: int, num_classes: int = 0, noise_scale: float = 1.0):
        super().__init__()
        self.base_dim, self.noise_scale, self.num_classes = base_dim, noise_scale, num_classes
        self.mlp = nn.Sequential(nn.Linear(base_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None

    def forward(self, c_noise: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        emb = self.mlp(timestep_embedding(c_noise * self.noise_scale, self.base_dim))
        if self.class_emb is not None:
            if class_labels is None:
                class_labels = torch.full((c_noise.shape[0],), self.num_classes, device=c_noise.device)
            emb = emb + self.class_emb(class_labels.long())
        return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (stable under bf16 autocast)."""

    def forward(self, x):
        return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps).to(x.dtype)
