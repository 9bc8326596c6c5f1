"""A UNet for the σ view (DDPM, Ho et al. 2020, Appendix B; Improved DDPM, Nichol & Dhariwal 2021;
ADM, Dhariwal & Nichol 2021): residual blocks with GroupNorm and SiLU, the noise level and class
injected as a scale and shift after each block's first normalisation, self-attention at chosen
resolutions, skip connections between the halves.

Shapes: x [B, C, H, W], c_noise [B], class_labels [B] (int, ``num_classes`` = null) -> [B, C_out, H, W].

Layout: the network computes in the memory format of its weights. ``kuosan.nets.layout.prepare_model`` (or
``net.to(memory_format=torch.channels_last)``) makes it compute in ``channels_last``, in which oneDNN's
CPU convolutions (and cuDNN's) run faster; every layer here keeps that layout (no hidden NCHW copies;
GroupNorm through ``kuosan.nets.layers.group_norm_act``), and the output comes back in the input's
layout. Numbers: benchmarks/results/peers*.json.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from kuosan.nets.layers import Conv2d, GroupNorm32, NoiseEmbedding, attention, scaled_residual, zero_init

__all__ = ["UNet", "UNetConfig"]


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 1               # image (or latent) channels
    out_channels: int = 1              # usually = in_channels
    resolution: int = 28               # input height = width
    base_channels: int = 64            # width of the first level
    channel_mults: tuple = (1, 2, 2)   # width multiplier per level; each level after the first halves the size
    num_blocks: int = 2                # residual blocks per level (the decoder gets one more)
    attn_resolutions: tuple = (7,)     # feature-map sizes that get self-attention
    head_channels: int = 32            # channels per attention head
    dropout: float = 0.0               # dropout inside residual blocks
    num_classes: int = 0               # 0 = unconditional; else class embedding with a null class
    noise_scale: float = 1.0           # multiplies c_noise before the sinusoidal embedding
    align_channels: int = 0            # > 0: a projection head from the middle block's features to this many
                                       # channels, trained by representation alignment (kuosan.training.repa)


def _layout(x: torch.Tensor) -> torch.memory_format:
    """The memory format a tensor is stored in (NCHW unless it is strictly channels_last)."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _groups(channels: int) -> int:
    for g in (32, 16, 8, 4, 2, 1):
        if channels % g == 0 and channels // g >= 2 or g == 1:
            return g
    return 1


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = GroupNorm32(_groups(cin), cin)
        self.conv1 = Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)  # scale and shift (Improved DDPM, "AdaGN")
        self.norm2 = GroupNorm32(_groups(cout), cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(Conv2d(cout, cout, 3, padding=1))
        self.skip = Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(self.norm1(x, act=True))                     # silu(norm1(x)), fused
        scale, shift = self.emb(F.silu(emb)).chunk(2, dim=1)          # each [B, cout]
        h = self.conv2(self.dropout(self.norm2(h, scale, shift, act=True)))
        return scaled_residual(h, self.skip(x), 2 ** -0.5)  # unit-variance skip sum (EDM, DDPM++ "skip_scale")


class Attention(nn.Module):
    """Multi-head self-attention over the H·W positions (:func:`kuosan.nets.layers.attention`)."""

    def __init__(self, channels: int, head_channels: int):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = GroupNorm32(_groups(channels), channels)
        self.qkv = Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(Conv2d(channels, channels, 1))

    def forward(self, x):
        B, C, H, W = x.shape
        # Channels as the last axis: a free view of a channels_last tensor (a small copy otherwise).
        qkv = self.qkv(self.norm(x)).permute(0, 2, 3, 1).reshape(B, H * W, 3, self.heads, C // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, HW, C/heads)
        h = attention(q, k, v)                           # (B, heads, HW, C/heads)
        h = h.permute(0, 2, 1, 3).reshape(B, H, W, C).permute(0, 3, 1, 2)  # (B, C, H, W), channels_last
        return scaled_residual(self.proj(h.contiguous(memory_format=_layout(x))), x, 2 ** -0.5)


class Down(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Up(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, size):
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class UNet(nn.Module):
    computes_in_weight_layout = True  # see the module docstring; kuosan.nets.layout.prepare_model looks for it

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        base, emb_dim = cfg.base_channels, 4 * cfg.base_channels
        self.embed = NoiseEmbedding(base, emb_dim, cfg.num_classes, cfg.noise_scale)
        self.conv_in = Conv2d(cfg.in_channels, base, 3, padding=1)

        # Encoder: remember every output's channel count for the skip connections.
        self.down = nn.ModuleList()
        skips, ch, res = [base], base, cfg.resolution
        for level, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.num_blocks):
                blocks = [ResBlock(ch, base * mult, emb_dim, cfg.dropout)]
                ch = base * mult
                if res in cfg.attn_resolutions:
                    blocks.append(Attention(ch, cfg.head_channels))
                self.down.append(nn.ModuleList(blocks))
                skips.append(ch)
            if level < len(cfg.channel_mults) - 1:
                self.down.append(nn.ModuleList([Down(ch)]))
                skips.append(ch)
                res = (res + 1) // 2

        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, cfg.dropout), Attention(ch, cfg.head_channels),
                                  ResBlock(ch, ch, emb_dim, cfg.dropout)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            for _ in range(cfg.num_blocks + 1):
                blocks = [ResBlock(ch + skips.pop(), base * mult, emb_dim, cfg.dropout)]
                ch = base * mult
                if res in cfg.attn_resolutions:
                    blocks.append(Attention(ch, cfg.head_channels))
                self.up.append(nn.ModuleList(blocks))
            if level > 0:
                self.up.append(nn.ModuleList([Up(ch)]))
                res = res * 2  # the exact size comes from the matching skip at run time
        self.norm_out = GroupNorm32(_groups(ch), ch)
        self.conv_out = zero_init(Conv2d(ch, cfg.out_channels, 3, padding=1))
        # REPA's projector h_φ (Yu et al. 2025, §3.3): an MLP on each position's middle-block features; training
        # only (kuosan.training.repa reads the middle block through a hook), unused when sampling
        mid, hidden = cfg.base_channels * cfg.channel_mults[-1], 4 * cfg.base_channels * cfg.channel_mults[-1]
        self.align_head = nn.Sequential(nn.Linear(mid, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                        nn.Linear(hidden, cfg.align_channels)) if cfg.align_channels > 0 else None

    def align_site(self) -> nn.Module:
        """The module whose output representation alignment reads: the middle block, at the lowest resolution."""
        return self.mid[-1]

    def memory_format(self) -> torch.memory_format:
        """``channels_last`` when the weights are stored so (see the module docstring), else NCHW."""
        return _layout(self.conv_out.weight)  # [C_out, ch, 3, 3]: unambiguous, ch >= 2

    def forward(self, x, c_noise, class_labels=None):
        out_fmt = _layout(x)
        emb = self.embed(c_noise, class_labels)
        h = self.conv_in(x.contiguous(memory_format=self.memory_format()))
        hs = [h]
        for blocks in self.down:
            for block in blocks:
                h = block(h, emb) if isinstance(block, ResBlock) else block(h)
            hs.append(h)
        for block in self.mid:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        for blocks in self.up:
            if isinstance(blocks[0], Up):
                h = blocks[0](h, hs[-1].shape[-2:])
                continue
            h = torch.cat([h, hs.pop()], dim=1)
            for block in blocks:
                h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        return self.conv_out(self.norm_out(h, act=True)).contiguous(memory_format=out_fmt)
