"""Generating images from a denoiser: σ grid, per-seed noise, guidance, batching."""

from __future__ import annotations

import contextlib

from typing import Sequence

import torch

from kuosan.diffusion.guidance import classifier_free_guidance
from kuosan.diffusion.samplers import get_sampler
from kuosan.diffusion.schedules import get_sigmas
from kuosan.diffusion.thresholding import threshold_denoiser
from kuosan.errors import KuosanError
from kuosan.rng import generators_for_seeds, randn

__all__ = ["sigmas_for", "generate"]


def sigmas_for(precond, schedule: str, steps: int, rho: float = 7.0, spacing: str = "linspace") -> torch.Tensor:
    """The σ grid for sampling ``precond`` (a discrete model's own VP schedule for ``vp-*``)."""
    vp = getattr(precond, "schedule", None)
    if schedule.startswith("vp-"):
        if vp is None:
            raise KuosanError(f"schedule {schedule!r} needs a discrete (eps/v/x0) model")
        return get_sigmas(schedule, steps, vp=vp, spacing=spacing)
    return get_sigmas(schedule, steps, precond.sigma_min, precond.sigma_max, rho=rho)


def generate(precond, *, shape: Sequence[int], seeds: Sequence[int], class_labels: Sequence[int] | None = None,
             sampler: str = "heun", steps: int = 18, schedule: str = "karras", rho: float = 7.0,
             guidance: float = 1.0, null_label: int | None = None, batch_size: int = 64,
             sampler_options: dict | None = None, sigmas: torch.Tensor | None = None,
             denoiser=None, threshold=None, progress=None, bf16: bool = False) -> torch.Tensor:
    """Images (float32, CPU, nominally in [-1, 1]) for ``seeds``; image k depends on seed k only.

    ``denoiser`` overrides ``precond`` as the callable (e.g. a wrapped one); ``precond`` still
    supplies the σ range and the device. ``threshold``: "clip" or a quantile for dynamic
    thresholding of the (guided) denoised image, see :mod:`kuosan.diffusion.thresholding`.
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
        return _generate(precond, shape, seeds, class_labels, sampler, steps, schedule, rho, guidance, null_label,
                         batch_size, sampler_options, sigmas, denoiser, threshold, progress, bf16)


def bf16_denoiser(den, device_type: str):
    """``den`` with its network under bfloat16 autocast, returning float32: convolutions and matmuls in
    bfloat16 (about twice the float32 rate on CPUs with AVX512-BF16, and on GPUs), the preconditioning,
    normalisation statistics in float32. Measured in benchmarks/results/peers*.json (speed) and
    precision.json (Fréchet distance against float32 sampling)."""
    def run(x, sigma, *args, **kwargs):
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return den(x, sigma, *args, **kwargs).float()
    return run


def _generate(precond, shape, seeds, class_labels, sampler, steps, schedule, rho, guidance, null_label, batch_size,
              sampler_options, sigmas, denoiser, threshold, progress, bf16) -> torch.Tensor:
    fn = get_sampler(sampler)
    device = next(precond.parameters()).device
    if sigmas is None:
        sigmas = sigmas_for(precond, schedule, steps, rho)
    sigmas = sigmas.to(device=device, dtype=torch.float32)
    den = denoiser or precond
    if bf16:
        den = bf16_denoiser(den, device.type)
    if class_labels is not None and guidance != 1.0:
        if null_label is None:
            raise KuosanError("guidance needs a class-conditional model")
        den = classifier_free_guidance(den, guidance, null_label)
    den = threshold_denoiser(den, threshold)  # after guidance: it is what over-saturates
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
