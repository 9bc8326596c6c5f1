"""A Diffusion Transformer (DiT, Peebles & Xie 2023, "Scalable Diffusion Models with Transformers").

The image (or latent) is cut into p×p patches, each linearly embedded into a token (§3.2, "Patchify"),
plus a 2-D position embedding; a stack of transformer blocks conditioned by adaLN-Zero (§3.2, Fig. 3)
on the noise level and class; a final adaptive LayerNorm and a linear layer back to p·p·C values a
token; tokens are rearranged into the image ("unpatchify").

adaLN-Zero: the conditioning vector c regresses, per block, a scale γ and shift β for each
LayerNorm (in place of its learned affine) and a gate α for each residual branch. The regressing layer is
zero-initialised, so α = 0 and every block starts as the identity (§3.2, "adaLN-Zero block").

Notation (paper → code):
    t, y        noise condition and class   → ``c_noise``, ``class_labels`` (``num_classes`` = null)
    c           conditioning vector         → ``emb`` = MLP(freq(t)) + E[y]   (layers.NoiseEmbedding)
    γ, β, α     scale, shift, gate          → ``scale``, ``shift``, ``gate``
    p, T        patch side, token count     → ``patch_size``, ``N = (H'/p)·(W'/p)``

Sizes that the patch does not divide: the input is zero-padded on the bottom and right up to the next
multiple of p and the output cropped back, so any resolution works (30 with p = 4 runs on a 32×32 grid).

Shapes: x [B, C, H, W], c_noise [B], class_labels [B] (int) or None -> [B, C_out, H, W].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from kuosan.errors import KuosanError
from kuosan.nets.layers import NoiseEmbedding, attention

__all__ = ["DiT", "DiTConfig", "DiTBlock", "sincos_pos_embed_2d"]

FREQ_DIM = 256  # "a 256-dimensional frequency embedding" of t (DiT §3.2, "Conditioning")


@dataclass(frozen=True)
class DiTConfig:
    in_channels: int = 1               # image (or latent) channels
    out_channels: int = 1              # usually = in_channels
    resolution: int = 28               # input height = width
    patch_size: int = 2                # side p of a patch; tokens = ceil(resolution / p)²
    depth: int = 6                     # transformer blocks
    width: int = 192                   # token width (hidden size)
    heads: int = 6                     # attention heads; width must be a multiple
    mlp_ratio: float = 4.0             # MLP hidden width = mlp_ratio · width
    dropout: float = 0.0               # dropout on the attention and MLP branches
    pos_embed: str = "sincos"          # "sincos" (fixed, 2-D) or "learned"
    num_classes: int = 0               # 0 = unconditional; else class embedding with a null class
    noise_scale: float = 1.0           # multiplies c_noise before the sinusoidal embedding

    def __post_init__(self):
        for name in ("in_channels", "out_channels", "resolution", "patch_size", "depth", "width", "heads"):
            if getattr(self, name) < 1:
                raise KuosanError(f"DiT {name} must be positive, got {getattr(self, name)}")
        if self.width % self.heads:
            raise KuosanError(f"DiT width {self.width} is not a multiple of heads {self.heads}")
        if self.pos_embed not in ("sincos", "learned"):
            raise KuosanError(f"DiT pos_embed must be 'sincos' or 'learned', got {self.pos_embed!r}")
        if self.pos_embed == "sincos" and self.width % 4:
            raise KuosanError(f"a 2-D sin-cos position embedding needs width divisible by 4, got {self.width}")
        if self.patch_size > self.resolution:
            raise KuosanError(f"DiT patch_size {self.patch_size} is larger than the resolution {self.resolution}")
        if not 0 <= self.dropout < 1:
            raise KuosanError(f"DiT dropout must be in [0, 1), got {self.dropout}")

    @property
    def grid(self) -> int:
        """Patches per side (after padding to a multiple of the patch size)."""
        return -(-self.resolution // self.patch_size)


def sincos_pos_embed_2d(width: int, grid: int) -> torch.Tensor:
    """Fixed 2-D position embedding [grid², width]: half the channels encode the row, half the column,
    each with the 1-D sin/cos code of the Transformer (Vaswani et al. 2017, §3.5; 2-D form as in MAE,
    He et al. 2022). Token order is row-major, as ``flatten`` of a [grid, grid] map gives."""
    quarter = width // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    pos = torch.arange(grid, dtype=torch.float64)
    row, col = torch.meshgrid(pos, pos, indexing="ij")

    def code(p):  # [grid²] -> [grid², width / 2]
        args = p.flatten()[:, None] * freqs[None]
        return torch.cat([args.sin(), args.cos()], dim=1)

    return torch.cat([code(row), code(col)], dim=1).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: LayerNorm output scaled by (1 + γ) and shifted by β, per sample (DiT §3.2)."""
    return x * (1 + scale[:, None]) + shift[:, None]


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # each (B, h, N, D/h)
        h = attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(h.transpose(1, 2).reshape(B, N, D))


class DiTBlock(nn.Module):
    """Pre-LN transformer block with adaLN-Zero conditioning (DiT §3.2, Fig. 3 right)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, width))
        self.drop = nn.Dropout(dropout)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))  # zeroed by DiT._init_weights

    def forward(self, x, emb):  # x (B, N, D), emb (B, D)
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(emb).chunk(6, dim=1)
        x = x + gate1[:, None] * self.drop(self.attn(modulate(self.norm1(x), shift1, scale1)))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN (shift, scale; no gate) then a linear map of each token to its p·p·C patch values."""

    def __init__(self, width: int, patch_values: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, patch_values)

    def forward(self, x, emb):
        shift, scale = self.ada(emb).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        p, w = cfg.patch_size, cfg.width
        self.patch_embed = nn.Conv2d(cfg.in_channels, w, p, stride=p)  # a linear map of each p×p patch
        self.embed = NoiseEmbedding(FREQ_DIM, w, cfg.num_classes, cfg.noise_scale)
        if cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.randn(1, cfg.grid ** 2, w) * 0.02)
        else:
            self.register_buffer("pos_embed", sincos_pos_embed_2d(w, cfg.grid)[None], persistent=False)
        self.blocks = nn.ModuleList(DiTBlock(w, cfg.heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.depth))
        self.final = FinalLayer(w, p * p * cfg.out_channels)
        self._init_weights()

    def _init_weights(self):
        """Xavier-uniform linear layers (as ViT), then zero the adaLN regressions and the output layer so
        the fresh network is the identity through every block and outputs 0 (DiT §3.2, "adaLN-Zero")."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.cfg.width, -1))
        nn.init.zeros_(self.patch_embed.bias)
        if self.embed.class_emb is not None:
            nn.init.normal_(self.embed.class_emb.weight, std=0.02)
        for ada in [b.ada for b in self.blocks] + [self.final.ada]:
            nn.init.zeros_(ada[1].weight)
            nn.init.zeros_(ada[1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, N, p·p·C] -> [B, C, g·p, g·p] with g = sqrt(N) patches a side (row-major tokens)."""
        B, g, p, C = tokens.shape[0], self.cfg.grid, self.cfg.patch_size, self.cfg.out_channels
        x = tokens.reshape(B, g, g, p, p, C)            # (B, row, col, py, px, C)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(B, C, g * p, g * p)

    def forward(self, x, c_noise, class_labels=None):
        B, _, H, W = x.shape
        r, side = self.cfg.resolution, self.cfg.grid * self.cfg.patch_size
        if H != r or W != r:
            raise KuosanError(f"this DiT was built for {r}x{r} inputs, got {H}x{W}")
        if side != r:
            x = F.pad(x, (0, side - r, 0, side - r))     # zero-pad bottom/right to a multiple of p
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, D)
        emb = self.embed(c_noise, class_labels)           # (B, D)
        for block in self.blocks:
            h = block(h, emb)
        out = self.unpatchify(self.final(h, emb))        # (B, C_out, side, side)
        return out[:, :, :r, :r]
