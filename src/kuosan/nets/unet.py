"""A UNet for the σ view (DDPM, Ho et al. 2020, Appendix B; Improved DDPM, Nichol & Dhariwal 2021;
ADM, Dhariwal & Nichol 2021): residual blocks with GroupNorm and SiLU, the noise level and class
injected as a scale and shift after each block's first normalisation, self-attention at chosen
resolutions, skip connections between the halves.

Shapes: x [B, C, H, W], c_noise [B], class_labels [B] (int, ``num_classes`` = null) -> [B, C_out, H, W].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from kuosan.nets.layers import GroupNorm32, NoiseEmbedding, zero_init

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


def _groups(channels: int) -> int:
    for g in (32, 16, 8, 4, 2, 1):
        if channels % g == 0 and channels // g >= 2 or g == 1:
            return g
    return 1


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = GroupNorm32(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)  # scale and shift (Improved DDPM, "AdaGN")
        self.norm2 = GroupNorm32(_groups(cout), cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return (self.skip(x) + h) * 2 ** -0.5  # unit-variance skip sum (EDM, DDPM++ "skip_scale")


class Attention(nn.Module):
    """Multi-head self-attention over the H·W positions, with fused attention kernels."""

    def __init__(self, channels: int, head_channels: int):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = GroupNorm32(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x):
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, HW, C/heads)
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(-1, -2).reshape(B, C, H, W)
        return (x + self.proj(h)) * 2 ** -0.5


class Down(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Up(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, size):
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        base, emb_dim = cfg.base_channels, 4 * cfg.base_channels
        self.embed = NoiseEmbedding(base, emb_dim, cfg.num_classes, cfg.noise_scale)
        self.conv_in = nn.Conv2d(cfg.in_channels, base, 3, padding=1)

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
        self.conv_out = zero_init(nn.Conv2d(ch, cfg.out_channels, 3, padding=1))

    def forward(self, x, c_noise, class_labels=None):
        emb = self.embed(c_noise, class_labels)
        h = self.conv_in(x)
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
        return self.conv_out(F.silu(self.norm_out(h)))
