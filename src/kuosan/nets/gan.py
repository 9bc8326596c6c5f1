"""A DCGAN-sized generator and discriminator (Radford et al. 2016, "Unsupervised Representation Learning with
Deep Convolutional Generative Adversarial Networks", §3 and Fig. 1), class-conditional, for the R3GAN objective
(:mod:`kuosan.training.gan`).

Generator: z ∈ R^{z_dim} (joined by a class embedding) -> a linear layer -> a C0×s×s map -> stride-2 transposed
4×4 convolutions, each doubling the side and halving the width -> tanh. Discriminator: the mirror, stride-2
4×4 convolutions down to the same s×s map, then a projection head (Miyato & Koyama 2018, "cGANs with
Projection Discriminator", eq. 3): D(x, y) = ψ(φ(x)) + e_yᵀ φ(x). Neither has a normalisation layer: R3GAN
(Huang et al. 2024, §3) trains without one, and a batch statistic would couple the samples of the
gradient penalties. The discriminator is built from torch's own ``nn.Conv2d``/``nn.Linear``: the R1/R2
penalties differentiate its input gradient once more, which kuosan's convolution kernel cannot.

Sizes: the side is halved while it is even and above 7, so 28 -> 14 -> 7 (two levels) and
64 -> 32 -> 16 -> 8 -> 4 (four, DCGAN's 64×64 layout). Width at level i (counted from the image) is
``min(max_channels, channels · 2^i)``.

As a kuosan network (kind ``"gan"`` in :data:`kuosan.nets.build.NETWORKS`) the pair is one module whose
``forward(x, c_noise, class_labels)`` is the generator's: ``x`` is the sampler's starting noise image and
the generator reads its first ``z_dim`` entries (i.i.d. N(0, 1), so exactly the latent it was trained on);
``c_noise`` is ignored. :class:`kuosan.diffusion.precond.GANPrecond` makes it a one-step denoiser. The
discriminator rides along so that a checkpoint's weights are one network that resumes on its own.

Shapes: x [B, C, H, W], class_labels [B] (int) or None -> [B, C, H, W] in [-1, 1]; D: [B, C, H, W] -> [B].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from kuosan.errors import KuosanError

__all__ = ["GANConfig", "Generator", "Discriminator", "GANPair", "levels_for"]

SLOPE = 0.2  # LeakyReLU slope (DCGAN §3, in the discriminator; here in both)


@dataclass(frozen=True)
class GANConfig:
    in_channels: int = 1                   # channels of the images (and of the noise image the sampler draws)
    out_channels: int = 1                  # = in_channels (the noise image and the sample have one shape)
    resolution: int = 28                   # image side: halved while even and above 7 (28 -> 7, 64 -> 4)
    num_classes: int = 0                   # 0 = unconditional; else class embedding (G) and projection (D)
    z_dim: int = 64                        # latent size: the first z_dim entries of the noise image (R3GAN: 64)
    g_channels: int = 64                   # generator width next to the image; doubles per level inwards
    d_channels: int = 64                   # discriminator width next to the image; doubles per level inwards
    max_channels: int = 512                # cap on either network's width

    def __post_init__(self):
        for name in ("in_channels", "out_channels", "resolution", "z_dim", "g_channels", "d_channels",
                     "max_channels"):
            if getattr(self, name) < 1:
                raise KuosanError(f"GAN {name} must be positive, got {getattr(self, name)}")
        if self.in_channels != self.out_channels:
            raise KuosanError(f"a GAN generator's noise image and sample have one shape: in_channels "
                              f"{self.in_channels} != out_channels {self.out_channels}")
        if self.num_classes < 0:
            raise KuosanError(f"GAN num_classes must be >= 0, got {self.num_classes}")
        if levels_for(self.resolution)[0] == 0:
            raise KuosanError(f"GAN resolution {self.resolution} cannot be halved (needs an even side above 7, "
                              "e.g. 28, 32 or 64)")
        if self.z_dim > self.in_channels * self.resolution ** 2:
            raise KuosanError(f"GAN z_dim {self.z_dim} exceeds the {self.in_channels * self.resolution ** 2} "
                              "entries of the noise image it is read from")

    def widths(self, base: int) -> list[int]:
        """Widths from the innermost (smallest) map out to the one next to the image."""
        n = levels_for(self.resolution)[0]
        return [min(self.max_channels, base * 2 ** i) for i in reversed(range(n))]


def levels_for(resolution: int) -> tuple[int, int]:
    """(stride-2 levels, side of the innermost map): halve while the side is even and above 7."""
    n, side = 0, resolution
    while side % 2 == 0 and side > 7:
        n, side = n + 1, side // 2
    return n, side


class Generator(nn.Module):
    """z (and a class embedding, concatenated) -> image in [-1, 1] (DCGAN's generator, Fig. 1)."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.cfg = cfg
        widths = cfg.widths(cfg.g_channels)
        self.side = levels_for(cfg.resolution)[1]
        self.embed = nn.Embedding(cfg.num_classes, cfg.z_dim) if cfg.num_classes else None
        z_in = cfg.z_dim * (2 if cfg.num_classes else 1)
        self.project = nn.Linear(z_in, widths[0] * self.side ** 2)
        outs = widths[1:] + [cfg.out_channels]
        self.ups = nn.ModuleList(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1) for a, b in zip(widths, outs))

    def forward_latent(self, z: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """z [B, z_dim] -> images [B, C, H, W]."""
        if self.embed is not None:
            if class_labels is None:
                raise KuosanError("this GAN generator is class-conditional: give class labels")
            if int(class_labels.max()) >= self.cfg.num_classes or int(class_labels.min()) < 0:
                raise KuosanError(f"a GAN generator knows classes 0-{self.cfg.num_classes - 1} and has no null "
                                  "class, so classifier-free guidance does not apply: sample with guidance 1")
            z = torch.cat([z, self.embed(class_labels)], dim=1)
        h = F.leaky_relu(self.project(z), SLOPE).view(len(z), -1, self.side, self.side)   # [B, C0, s, s]
        for i, up in enumerate(self.ups):
            h = up(h)
            h = F.leaky_relu(h, SLOPE) if i < len(self.ups) - 1 else torch.tanh(h)
        return h

    def forward(self, x: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: the noise image [B, C, H, W]; its first z_dim entries are the latent."""
        return self.forward_latent(x.flatten(1)[:, :self.cfg.z_dim].to(torch.float32), class_labels)


class Discriminator(nn.Module):
    """Image -> one logit: stride-2 convolutions, then ψ(φ) + projection of the class (Miyato & Koyama, eq. 3)."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        widths = list(reversed(cfg.widths(cfg.d_channels)))          # next to the image first
        side = levels_for(cfg.resolution)[1]
        ins = [cfg.in_channels] + widths[:-1]
        self.downs = nn.ModuleList(nn.Conv2d(a, b, 4, stride=2, padding=1) for a, b in zip(ins, widths))
        features = widths[-1] * side ** 2                             # dim of φ(x)
        self.psi = nn.Linear(features, 1)
        self.embed = nn.Embedding(cfg.num_classes, features) if cfg.num_classes else None

    def forward(self, x: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        h = x
        for down in self.downs:
            h = F.leaky_relu(down(h), SLOPE)
        phi = h.flatten(1)                                            # [B, features]
        out = self.psi(phi).squeeze(1)                                # [B]
        if self.embed is not None:
            out = out + (self.embed(class_labels) * phi).sum(1)       # e_yᵀ φ(x)
        return out


class GANPair(nn.Module):
    """The generator and its discriminator as one kuosan network; calling it runs the generator."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.cfg = cfg
        self.generator = Generator(cfg)
        self.discriminator = Discriminator(cfg)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor | None = None,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.generator(x, class_labels)
