"""A KL-regularised convolutional autoencoder for latent diffusion (Rombach et al. 2022, §3 and Appendix G).

The encoder maps an image ``x`` in [-1, 1] to a diagonal Gaussian posterior q(z|x) = N(μ, diag σ²) over a
latent of ``latent_channels`` x (resolution / downsample)², the decoder maps a latent back to pixels.
Residual blocks (GroupNorm, SiLU, 3x3 convolutions) at every level, a stride-2 convolution between levels
on the way down, nearest-neighbour upsampling and a convolution (to the next level's width) on the way
up; no attention, so the network is fully convolutional. Also here: the KL term in closed form and a
PatchGAN discriminator.

Shapes: x [B, C, H, H] -> μ, log σ² [B, latent_channels, h, h] with h = H halved (rounding up)
log2(downsample) times -> x_hat [B, C, H, H].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from kuosan.errors import KuosanError
from kuosan.nets.layers import Conv2d, GroupNorm32
from kuosan.nets.unet import _groups, _layout

__all__ = ["AutoencoderConfig", "Autoencoder", "DiagonalGaussian", "PatchDiscriminator", "default_mults",
           "latent_resolution"]


@dataclass(frozen=True)
class AutoencoderConfig:
    in_channels: int = 1               # image channels (1 grey, 3 RGB)
    resolution: int = 28               # image height = width
    latent_channels: int = 4           # channels of z
    downsample: int = 4                # spatial reduction factor f: 2, 4 or 8 (one stride-2 level per factor 2)
    base_channels: int = 64            # width at full resolution
    channel_mults: tuple = (1, 2, 2)   # width multiplier per level; log2(downsample) + 1 entries
    num_blocks: int = 1                # residual blocks per level (encoder and decoder alike)


def default_mults(downsample: int) -> tuple:
    """Level widths for a reduction factor: (1, 2), (1, 2, 2), (1, 2, 2, 4)."""
    return {2: (1, 2), 4: (1, 2, 2), 8: (1, 2, 2, 4)}.get(downsample, (1,) + (2,) * max(0, downsample.bit_length() - 1))


def _levels(cfg: AutoencoderConfig) -> int:
    if cfg.downsample not in (1, 2, 4, 8, 16):
        raise KuosanError(f"autoencoder downsample must be 2, 4 or 8 (1 and 16 also work), got {cfg.downsample}")
    levels = cfg.downsample.bit_length() - 1
    if len(cfg.channel_mults) != levels + 1:
        raise KuosanError(f"autoencoder channel_mults needs {levels + 1} entries for downsample {cfg.downsample}, "
                          f"got {list(cfg.channel_mults)}")
    return levels


def _sizes(resolution: int, levels: int) -> list[int]:
    """Feature-map side at every level: halved, rounding up (28 -> 14 -> 7 -> 4)."""
    sizes = [resolution]
    for _ in range(levels):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


def latent_resolution(cfg: AutoencoderConfig) -> int:
    return _sizes(cfg.resolution, _levels(cfg))[-1]


def _norm(channels: int) -> nn.Module:
    return GroupNorm32(_groups(channels), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice plus a (1x1 when the width changes) skip (He et al. 2016, pre-activation)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), Conv2d(cout, cout, 3, padding=1)
        self.skip = Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(self.norm1(x, act=True))          # silu(norm1(x)), fused in channels_last
        h = self.conv2(self.norm2(h, act=True))
        return self.skip(x) + h


class Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        levels, base = _levels(cfg), cfg.base_channels
        self.conv_in = Conv2d(cfg.in_channels, base, 3, padding=1)
        layers, ch = [], base
        for level, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.num_blocks):
                layers.append(ResBlock(ch, base * mult))
                ch = base * mult
            if level < levels:
                layers.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))   # side -> ceil(side / 2)
        layers.append(ResBlock(ch, ch))
        self.body = nn.Sequential(*layers)
        self.norm_out = _norm(ch)
        self.conv_out = Conv2d(ch, 2 * cfg.latent_channels, 3, padding=1)   # μ and log σ²

    def forward(self, x):
        return self.conv_out(self.norm_out(self.body(self.conv_in(x)), act=True))


class Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        levels, base = _levels(cfg), cfg.base_channels
        self.sizes = _sizes(cfg.resolution, levels)
        ch = base * cfg.channel_mults[-1]
        self.conv_in = Conv2d(cfg.latent_channels, ch, 3, padding=1)
        self.mid = ResBlock(ch, ch)
        self.blocks, self.ups = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(levels + 1)):
            blocks = []
            for _ in range(cfg.num_blocks):
                blocks.append(ResBlock(ch, base * cfg.channel_mults[level]))
                ch = base * cfg.channel_mults[level]
            self.blocks.append(nn.Sequential(*blocks))
            if level > 0:                              # the upsampling conv already narrows to the next width
                self.ups.append(Conv2d(ch, base * cfg.channel_mults[level - 1], 3, padding=1))
                ch = base * cfg.channel_mults[level - 1]
        self.norm_out = _norm(ch)
        self.conv_out = Conv2d(ch, cfg.in_channels, 3, padding=1)

    def forward(self, z):
        native = z.shape[-1] == self.sizes[-1]         # a latent of another side (scale equivariance) doubles
        h = self.mid(self.conv_in(z))
        for i, blocks in enumerate(self.blocks):
            h = blocks(h)
            if i < len(self.ups):                      # up to the next level's exact side (7 -> 14 -> 28)
                side = self.sizes[len(self.ups) - 1 - i] if native else 2 * h.shape[-1]
                h = self.ups[i](F.interpolate(h, size=(side, side), mode="nearest"))
        return self.conv_out(self.norm_out(h, act=True))

    @property
    def last_layer(self) -> torch.Tensor:
        """The output convolution's weight (for the adaptive GAN weight, Esser et al. 2021, eq. 7)."""
        return self.conv_out.weight


class DiagonalGaussian:
    """q(z|x) = N(μ, diag σ²) from the encoder's ``2·latent_channels`` output (log σ² clamped to [-30, 20])."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.float().chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = μ + σ·ε, ε ~ N(0, I) (the reparameterisation trick, Kingma & Welling 2014, §2.4)."""
        eps = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype).to(self.mean.device)
        return self.mean + self.std * eps

    def kl(self) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)) in nats, per sample [B]: ½ Σ (μ² + σ² − 1 − log σ²)
        (Kingma & Welling 2014, Appendix B, the negative of its −D_KL term)."""
        return 0.5 * (self.mean.square() + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)


class Autoencoder(nn.Module):
    """``encode(x) -> DiagonalGaussian``, ``decode(z) -> x_hat``; ``forward`` does both with a sampled z.

    Like kuosan's UNet it computes in the memory format of its weights: ``kuosan.nets.layout.prepare_model``
    puts them in ``channels_last``, where the fused GroupNorm-SiLU and the 3x3 kernels of
    :mod:`kuosan.nets.kernels` run (benchmarks/autoencoder_speed.py). Inputs may come in either layout;
    outputs come back in the input's."""

    computes_in_weight_layout = True  # kuosan.nets.layout.prepare_model looks for it

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        if cfg.resolution < 1 or cfg.latent_channels < 1 or cfg.base_channels < 1 or cfg.num_blocks < 0:
            raise KuosanError(f"autoencoder settings must be positive, got {cfg}")
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.cfg.latent_channels, latent_resolution(self.cfg), latent_resolution(self.cfg))

    def memory_format(self) -> torch.memory_format:
        """``channels_last`` when the weights are stored so, else NCHW."""
        return _layout(self.decoder.mid.conv1.weight)  # [ch, ch, 3, 3]: unambiguous, ch >= 2

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        moments = self.encoder(x.contiguous(memory_format=self.memory_format()))
        return DiagonalGaussian(moments.contiguous(memory_format=_layout(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z.contiguous(memory_format=self.memory_format())).contiguous(memory_format=_layout(z))

    def forward(self, x, sample: bool = True, generator: torch.Generator | None = None):
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mean
        return self.decode(z), posterior


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017, §3.2.2): a small CNN scoring overlapping patches as real or fake.

    4x4 convolutions, stride 2 while the side is at least 16 (at most 3 times), then two stride-1 layers;
    GroupNorm instead of BatchNorm so a score does not depend on the rest of the batch. Output [B, 1, h, h].
    """

    def __init__(self, in_channels: int, resolution: int, width: int = 64):
        super().__init__()
        downs = 1 if resolution < 16 else 2 if resolution < 64 else 3
        layers, ch = [nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)], width
        for i in range(1, downs + 1):
            out = width * min(2 ** i, 8)
            layers += [nn.Conv2d(ch, out, 4, stride=2 if i < downs else 1, padding=1, bias=False), _norm(out),
                       nn.LeakyReLU(0.2)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)
