"""Small building blocks shared by the networks."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from kuosan.nets import kernels

__all__ = ["timestep_embedding", "NoiseEmbedding", "zero_init", "GroupNorm32", "group_norm_act", "attention",
           "scaled_residual", "Conv2d"]


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's weights so a residual branch starts as the identity (Improved DDPM §3.3; DiT)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, same state dict) whose 3×3 (stride 1, padding 1) and 1×1 convolutions
    of ``channels_last`` CPU tensors run on the kernels of :mod:`kuosan.nets.kernels`, forward and backward.

    oneDNN's direct 3×3 convolution already runs at about the CPU's peak multiply-add rate (500–560 GFLOP/s on
    the 2-core benchmark machine, where a register-only FMA loop reached 540); Winograd's F(2×2, 3×3) needs 2.25× and
    F(4×4, 3×3) 4× fewer multiply-adds (Lavin & Gray 2016), which made these layers 1.1–1.7× faster there
    (float32 F(2×2) rounds less than oneDNN, F(4×4), used on maps of 24×24 and up, about 5× more). Under
    bfloat16 autocast, on CPUs with AVX512-BF16, 3×3 layers take F(2×2, 3×3) with bfloat16 products (an error
    within 1.5× of oneDNN's bfloat16 one), except without gradients on CPUs with AMX, where oneDNN's bfloat16
    convolution is faster (:func:`kuosan.nets.kernels.amx`). 1×1 layers are plain matrix products. The kernels have register
    blockings for AVX512 and for AVX2 with FMA and run where the library is built for one of them
    (``KUOSAN_CONV_KERNELS=1`` forces them elsewhere, ``=0`` turns them off). Channel counts that are not
    multiples of 16, other kernel sizes and strides, other devices, torch.compile and FLOP counters take
    torch's convolution.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        k, one = self.kernel_size, (1, 1)
        self._fast = (self.stride == one and self.dilation == one and self.groups == 1
                      and ((k == (3, 3) and self.padding == one and self.padding_mode == "zeros")
                           or (k == one and self.padding == (0, 0))))

    def _conv_forward(self, x, weight, bias):
        if not self._fast or torch.compiler.is_compiling() or _dispatch_mode_active():
            return super()._conv_forward(x, weight, bias)
        if not torch.is_autocast_enabled("cpu"):
            ok = kernels.conv_ok(x, weight)
        else:  # what autocast would run in bfloat16; the weight and bias stay float32 until their transform
            ok = (self.kernel_size == (3, 3) and torch.get_autocast_dtype("cpu") == torch.bfloat16
                  and kernels.conv_bf16_ok(x, weight) and (torch.is_grad_enabled() or not kernels.amx()))
            x = x.to(torch.bfloat16) if ok else x
        if not ok:
            return super()._conv_forward(x, weight, bias)
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad)):
            return _KernelConv.apply(x, weight, bias)
        # no gradients; a weight that trains changes every step, so only a frozen one (or one in inference mode)
        # keeps its transform
        return _KernelConv.run(x, weight, bias,
                               keep_filter=torch.is_inference_mode_enabled() or not weight.requires_grad)


def _dispatch_mode_active() -> bool:
    """Whether a torch dispatch mode sees each op (FlopCounterMode, fake tensors, tracing): it must see torch's
    convolution, and the kernels could not read a fake tensor's memory."""
    try:
        from torch.utils._python_dispatch import _get_current_dispatch_mode
    except ImportError:  # a torch without it: assume none
        return False
    return _get_current_dispatch_mode() is not None


class _KernelConv(torch.autograd.Function):
    @staticmethod
    def run(x, weight, bias, keep_filter=False):
        if weight.shape[-1] == 3:
            return kernels.winograd_conv(x, weight, bias, keep_filter=keep_filter)
        return kernels.conv1x1(x, weight, bias)

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _KernelConv.run(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable  # a second derivative through it raises instead of being wrong
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        backward = kernels.winograd_conv_backward if weight.shape[-1] == 3 else kernels.conv1x1_backward
        return backward(grad_y, x, weight, need[0], need[1], ctx.has_bias and need[2])


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """``softmax(q kᵀ / √d) v`` for q, k, v [B, heads, L, d] (Vaswani et al. 2017, eq. 1), fastest kernel per case.

    On the CPU, torch's fused (flash) kernel loses to plain matmuls for short sequences (≤ 128 positions, such
    as a 7×7 or 8×8 map: 1.7 against 2.5 ms forward and backward at 49) but wins beyond (14×14: 11 against 27
    ms), and its bfloat16 backward is 2–4× slower than its float32 one; so short sequences take the matmul
    form and long bfloat16 ones the fused kernel in float32.
    Elsewhere (CUDA, under torch.compile, with dropout) it is ``F.scaled_dot_product_attention`` as is.
    """
    if q.device.type != "cpu" or torch.compiler.is_compiling() or dropout_p > 0:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    if q.shape[-2] <= 128:  # torch's CPU softmax accumulates bfloat16 in float32 itself
        return ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v
    if q.dtype == torch.float32 and not torch.is_autocast_enabled("cpu"):
        return F.scaled_dot_product_attention(q, k, v)
    with torch.autocast("cpu", enabled=False):
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)


def scaled_residual(h: torch.Tensor, skip: torch.Tensor, scale: float) -> torch.Tensor:
    """``(h + skip) * scale``: a residual sum kept at unit variance (EDM, DDPM++ "skip_scale" = 1/√2).

    On the CPU one pass of the fused kernel (:mod:`kuosan.nets.kernels`), forward and backward, where torch
    needs two (and its bfloat16 element-wise kernels run slower than its float32 ones); elsewhere, or with
    operands of different dtypes or layouts, torch's in-place ``add_`` and ``mul_`` on ``h``.
    """
    if not torch.compiler.is_compiling() and kernels.same_layout(h, skip):
        if h.requires_grad or skip.requires_grad:
            return _ScaledResidual.apply(h, skip, scale)
        return kernels.scaled_sum(h, skip, scale)
    return h.add_(skip).mul_(scale)


class _ScaledResidual(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, skip, scale):
        ctx.scale = scale
        return kernels.scaled_sum(h, skip, scale)

    @staticmethod
    def backward(ctx, grad):
        g = kernels.scaled_sum(grad, None, ctx.scale) if kernels.same_layout(grad, grad) else grad * ctx.scale
        return g, g, None


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
    """GroupNorm computed in float32 (stable under bf16 autocast).

    ``norm(x, scale, shift, act=True)`` also applies a per-sample ``* (1 + scale) + shift`` (AdaGN,
    Improved DDPM) and SiLU in the same pass over the activations (:func:`group_norm_act`); plain
    ``norm(x)`` is ordinary GroupNorm.
    """

    def forward(self, x, scale=None, shift=None, act: bool = False):
        if _fused(x, self.weight, self.bias):  # reads bfloat16 itself, statistics in float32
            return _fused_group_norm_act(x, self.num_groups, self.weight, self.bias, self.eps, scale, shift, act)
        y = group_norm_act(x.float(), self.num_groups, self.weight, self.bias, self.eps, scale, shift, act)
        return y.to(x.dtype)


def group_norm_act(x: torch.Tensor, groups: int, weight, bias, eps: float = 1e-5, scale=None, shift=None,
                   act: bool = False) -> torch.Tensor:
    """``silu?(group_norm(x) * (1 + scale) + shift)`` for x [B, C, H, W], scale and shift [B, C] (or None).

    On the CPU, ``channels_last`` float32/bfloat16 tensors go to the fused kernel of
    :mod:`kuosan.nets.kernels` (one thread per sample, two or three passes over it while it is in cache;
    :class:`_FusedGroupNormAct`). Without it, torch's CPU GroupNorm is 2–3× slower on ``channels_last``
    tensors than on NCHW ones (``kuosan bench --layers``), so the same maths is computed in torch ops in
    their own layout: everything after the statistics is one multiply-add per element, and the backward
    pass is written out (:class:`_GroupNormAct`). NCHW tensors, other devices, and code under
    torch.compile (whose compiler fuses the plain ops itself) take torch's own ops.
    """
    if _fused(x, weight, bias):
        return _fused_group_norm_act(x, groups, weight, bias, eps, scale, shift, act)
    channels_last = x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    if not channels_last or weight is None or bias is None or torch.compiler.is_compiling():
        y = F.group_norm(x, groups, weight, bias, eps)
        if scale is not None:
            y = torch.addcmul(shift[:, :, None, None], y, 1 + scale[:, :, None, None])
        return F.silu(y, inplace=not y.requires_grad) if act else y
    if scale is None:
        scale = shift = x.new_zeros(())[None, None].expand(x.shape[0], x.shape[1])
    return _GroupNormAct.apply(x, weight, bias, scale, shift, groups, eps, act)


def _fused(x, weight, bias) -> bool:
    return (weight is not None and bias is not None and not torch.compiler.is_compiling()
            and kernels.available(x))


def _fused_group_norm_act(x, groups, weight, bias, eps, scale, shift, act):
    """:func:`group_norm_act` on the fused kernel (the caller checked :func:`_fused`); no graph without grads."""
    if not torch.is_grad_enabled() or not any(t is not None and t.requires_grad
                                              for t in (x, weight, bias, scale, shift)):
        return kernels.gn_forward(x, groups, weight, bias, scale, shift, eps, act)[0]
    return _FusedGroupNormAct.apply(x, weight, bias, scale, shift, groups, eps, act)


class _FusedGroupNormAct(torch.autograd.Function):
    """:func:`group_norm_act` through the fused kernel; the maths is that of :class:`_GroupNormAct`."""

    @staticmethod
    def forward(ctx, x, weight, bias, scale, shift, groups, eps, act):
        y, mean, rstd = kernels.gn_forward(x, groups, weight, bias, scale, shift, eps, act)
        ctx.save_for_backward(x, weight, bias, scale, shift, mean, rstd)
        ctx.groups, ctx.act = groups, act
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, bias, scale, shift, mean, rstd = ctx.saved_tensors
        grad_x, s1, d_gamma = kernels.gn_backward(grad_y, x, ctx.groups, weight, bias, scale, shift, mean, rstd,
                                                  ctx.act)
        need = ctx.needs_input_grad  # scale and shift may be None (plain GroupNorm): no gradient for them
        one_s = 1 if scale is None else 1 + scale.float()
        grad_w = (d_gamma * one_s).sum(0).to(weight.dtype) if need[1] else None
        grad_b = (s1 * one_s).sum(0).to(bias.dtype) if need[2] else None
        grad_scale = (d_gamma * weight.float() + s1 * bias.float()).to(scale.dtype) if need[3] else None
        grad_shift = s1.to(shift.dtype) if need[4] else None
        return grad_x if need[0] else None, grad_w, grad_b, grad_scale, grad_shift, None, None, None


def _affine(x, groups, weight, bias, scale, shift, eps):
    """Per-(sample, channel) ``a``, ``c`` with ``group_norm(x) * (1 + scale) + shift == a * x + c``.

    Statistics from per-channel means of x and x² (fast reductions in either layout), pooled per group.
    """
    B, C = x.shape[:2]
    mean_c = x.mean((2, 3))                                            # [B, C]
    msq_c = (x * x).mean((2, 3))                                       # [B, C]
    mean = mean_c.view(B, groups, -1).mean(-1, keepdim=True)           # [B, G, 1]
    var = (msq_c.view(B, groups, -1).mean(-1, keepdim=True) - mean * mean).clamp_min(0)
    rstd = (var + eps).rsqrt()                                         # [B, G, 1]
    gamma = weight * (1 + scale)                                       # [B, C]
    beta = bias * (1 + scale) + shift                                  # [B, C]
    a = (gamma.view(B, groups, -1) * rstd).view(B, C)
    c = beta - (mean * a.view(B, groups, -1)).view(B, C)
    return a, c, mean, rstd, gamma


class _GroupNormAct(torch.autograd.Function):
    """z = a·x + c (GroupNorm with AdaGN folded into a, c), y = silu(z) or z; backward by hand.

    Notation: x̂ = (x − μ)·r (μ, r: group mean and inverse std), z = γ·x̂ + β with γ = w·(1 + s) and
    β = b·(1 + s) + shift per sample and channel. With g = ∂L/∂z, S1 = Σ_hw g and S2 = Σ_hw g·x:
    ∂L/∂γ = r·(S2 − μ·S1), ∂L/∂β = S1, and ∂L/∂x = r·(γg − mean_grp(γg) − x̂·mean_grp(γg·x̂)).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, scale, shift, groups, eps, act):
        a, c, mean, rstd, gamma = _affine(x, groups, weight, bias, scale, shift, eps)
        z = torch.addcmul(c[:, :, None, None], x, a[:, :, None, None])
        keep_z = act and any(ctx.needs_input_grad)  # SiLU's backward needs z
        ctx.save_for_backward(x, a, mean, rstd, gamma, weight, bias, scale, z if keep_z else None)
        ctx.groups, ctx.act = groups, act
        if not act:
            return z
        return F.silu(z) if keep_z else F.silu(z, inplace=True)  # in place when nothing will need z

    @staticmethod
    def backward(ctx, grad_y):
        x, a, mean, rstd, gamma, weight, bias, scale, z = ctx.saved_tensors
        B, C, H, W = x.shape
        G, n = ctx.groups, C // ctx.groups * H * W                    # elements per group
        g = torch.ops.aten.silu_backward(grad_y, z) if ctx.act else grad_y
        s1 = g.sum((2, 3))                                             # [B, C]
        s2 = (g * x).sum((2, 3))                                       # [B, C]
        d_gamma = (s2.view(B, G, -1) - mean * s1.view(B, G, -1)) * rstd  # [B, G, C/G]
        m1 = (gamma.view(B, G, -1) * s1.view(B, G, -1)).sum(-1, keepdim=True) / n
        m2 = (gamma.view(B, G, -1) * d_gamma).sum(-1, keepdim=True) / n
        p = (-rstd * rstd * m2).expand(B, G, C // G).reshape(B, C)     # coefficient of x
        q = (rstd * (rstd * m2 * mean - m1)).expand(B, G, C // G).reshape(B, C)
        grad_x = torch.addcmul(torch.addcmul(q[:, :, None, None], x, p[:, :, None, None]), g, a[:, :, None, None])
        d_gamma = d_gamma.reshape(B, C)
        one_s = 1 + scale
        grad_w = (d_gamma * one_s).sum(0) if ctx.needs_input_grad[1] else None
        grad_b = (s1 * one_s).sum(0) if ctx.needs_input_grad[2] else None
        grad_scale = d_gamma * weight + s1 * bias if ctx.needs_input_grad[3] else None
        grad_shift = s1 if ctx.needs_input_grad[4] else None
        return grad_x, grad_w, grad_b, grad_scale, grad_shift, None, None, None
