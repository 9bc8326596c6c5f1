"""Generating images from a denoiser: σ grid, per-seed noise, guidance, batching."""

from __future__ import annotations

import contextlib

from typing import Sequence

import torch
import torch.distributed as dist

from kuosan.diffusion.guidance import classifier_free_guidance
from kuosan.diffusion.samplers import get_sampler
from kuosan.diffusion.schedules import get_sigmas
from kuosan.diffusion.thresholding import threshold_denoiser
from kuosan.config import SampleConfig
from kuosan.errors import KuosanError
from kuosan.rng import generators_for_seeds, randn
from kuosan.runtime import shard_slice

__all__ = ["sigmas_for", "generate", "generate_distributed", "bf16_denoiser"]


def sigmas_for(precond, schedule: str, steps: int, rho: float = 7.0, spacing: str = "linspace") -> torch.Tensor:
    """The σ grid for sampling ``precond`` (a discrete model's own VP schedule for ``vp-*``)."""
    vp = getattr(precond, "schedule", None)
    if schedule.startswith("vp-"):
        if vp is None:
            raise KuosanError(f"schedule {schedule!r} needs a discrete (eps/v/x0) model")
        return get_sigmas(schedule, steps, vp=vp, spacing=spacing)
    return get_sigmas(schedule, steps, precond.sigma_min, precond.sigma_max, rho=rho)


def generate(precond, sample: SampleConfig = SampleConfig(), *, shape: Sequence[int], seeds: Sequence[int],
             class_labels: Sequence[int] | None = None, null_label: int | None = None, batch_size: int = 64,
             sampler_options: dict | None = None, sigmas: torch.Tensor | None = None, denoiser=None,
             threshold=None, progress=None, bf16: bool = False) -> torch.Tensor:
    """Images (float32, CPU, nominally in [-1, 1]) for ``seeds``; image k depends on seed k only.

    ``sample``: sampler, steps, σ grid and guidance (:class:`kuosan.config.SampleConfig`, whose defaults are
    kuosan's). ``sigmas`` overrides the grid. ``denoiser`` overrides ``precond`` as the callable (e.g. a
    wrapped one); ``precond`` still supplies the σ range and the device. ``threshold``: "clip" or a quantile
    for dynamic thresholding of the (guided) denoised image, see :mod:`kuosan.diffusion.thresholding`.
    ``bf16``: the network runs under bfloat16 autocast (:func:`bf16_denoiser`); the sampler's own
    arithmetic stays float32.
    """
    with contextlib.ExitStack() as stack:
        if bf16:
            # Autocast keeps its cast weights until the outermost autocast context closes (and only outside
            # inference_mode): an enabled one around the whole loop holds them from step to step, a disabled
            # one inside keeps the sampler's own arithmetic float32; bf16_denoiser enables it per call.
            device_type = next(precond.parameters()).device.type
            stack.enter_context(torch.no_grad())
            stack.enter_context(torch.autocast(device_type, dtype=torch.bfloat16))
            stack.enter_context(torch.autocast(device_type, enabled=False))
        else:
            stack.enter_context(torch.inference_mode())
        den = _guided_denoiser(precond, sample, denoiser=denoiser, bf16=bf16, threshold=threshold,
                               conditional=class_labels is not None, null_label=null_label)
        if sigmas is None:
            sigmas = sigmas_for(precond, sample.schedule, sample.steps, sample.rho)
        device = next(precond.parameters()).device
        return _generate(den, get_sampler(sample.sampler), sigmas.to(device=device, dtype=torch.float32),
                         shape=shape, seeds=seeds, class_labels=class_labels, batch_size=batch_size,
                         sampler_options=sampler_options, progress=progress, device=device)


def bf16_denoiser(den, device_type: str):
    """``den`` with its network under bfloat16 autocast, returning float32: convolutions and matmuls in
    bfloat16 (about twice the float32 rate on CPUs with AVX512-BF16, and on GPUs), the preconditioning,
    normalisation statistics in float32. Measured in benchmarks/results/peers*.json (speed) and
    precision.json (Fréchet distance against float32 sampling)."""
    def run(x, sigma, *args, **kwargs):
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return den(x, sigma, *args, **kwargs).float()
    return run


def _guided_denoiser(precond, sample: SampleConfig, *, denoiser, bf16, threshold, conditional, null_label):
    """The denoiser the sampler calls: ``precond`` (or ``denoiser``), in bfloat16, guided, thresholded."""
    den = denoiser or precond
    if bf16:
        den = bf16_denoiser(den, next(precond.parameters()).device.type)
    if conditional and sample.guidance != 1.0:
        if null_label is None:
            raise KuosanError("guidance needs a class-conditional model")
        den = classifier_free_guidance(den, sample.guidance, null_label, rescale=sample.guidance_rescale)
    return threshold_denoiser(den, threshold)  # after guidance: it is what over-saturates


def _generate(den, fn, sigmas, *, shape, seeds, class_labels, batch_size, sampler_options, progress,
              device) -> torch.Tensor:
    out = []
    for start in range(0, len(seeds), batch_size):
        batch_seeds = list(seeds[start:start + batch_size])
        gens = generators_for_seeds(batch_seeds)
        x = randn((len(batch_seeds), *shape), gens, device=device) * sigmas[0]
        extra = {}
        if class_labels is not None:
            extra["class_labels"] = torch.as_tensor(list(class_labels[start:start + batch_size]),
                                                    dtype=torch.long, device=device)
        x = fn(den, x, sigmas, extra_args=extra, generator=gens, **(sampler_options or {}))
        out.append(x.float().cpu())
        if progress is not None:
            progress(len(batch_seeds))
    return torch.cat(out)


def generate_distributed(precond, *, seeds: Sequence[int], class_labels: Sequence[int] | None = None,
                         progress=None, **kwargs) -> torch.Tensor:
    """:func:`generate` with the seeds split over the process group and the images
    gathered: every rank returns all images, image k the one a single process makes for seed k.
    Every rank must call it; without a process group it is ``generate``."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world == 1:
        return generate(precond, seeds=seeds, class_labels=class_labels, progress=progress, **kwargs)
    rows = shard_slice(len(seeds), dist.get_rank(), world)
    mine = list(seeds)[rows]
    scale = len(seeds) / max(1, len(mine))
    if mine:
        x = generate(precond, seeds=mine, progress=(lambda n: progress(n * scale)) if progress else None,
                     class_labels=None if class_labels is None else list(class_labels)[rows], **kwargs)
    else:
        x = torch.empty((0, *kwargs["shape"]))
    parts = [None] * world
    dist.all_gather_object(parts, x)
    return torch.cat(parts)
