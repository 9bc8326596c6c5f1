"""Running one checked request on a loaded model: generate, img2img, inpaint, invert, interpolate, live.

Each mode calls the library (``kuosan.sampling.generate``, ``kuosan.diffusion.editing``) with the model's σ grid
and its (guided) denoiser, and reports every sampler step to ``report(done, total, preview)``, where
``preview()`` makes the current denoised estimate as an image only if the caller wants one. ``report`` may raise
(a client that went away) and the step loop stops there. The result is a :class:`Made`: images with the
parameters that reproduce each, and what the page shows beside them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from kuosan import __version__
from kuosan.serve.forms import Request
from kuosan.serve.models import Loaded

__all__ = ["Made", "run_request", "image_params"]


@dataclass
class Made:
    images: list                           # [(uint8 [H, W, C], params)] one per result image
    grid: np.ndarray | None = None         # uint8 [H, W, C]: the results side by side (edits: input | result)
    inputs: dict = field(default_factory=dict)  # name -> uint8 [H, W, C]: the upload, the mask as drawn
    note: str = ""                         # one line the page shows (a round-trip PSNR, a σ)


def image_params(req: Request, loaded: Loaded, seed: int, label: int | None, **extra) -> dict:
    """What a PNG carries: enough to make it again (model, weights checksum, sampler, steps, seed, class …)."""
    pipe = loaded.pipe
    names = pipe.class_names
    _, h, w = pipe.pixel_shape
    p = {**req.params(), "seed": int(seed), "class": label, "checksum": loaded.checksum, "kuosan": __version__,
         "size": f"{w}x{h}", "class_name": names[label] if label is not None and label < len(names) else None}
    p.pop("seeds", None)
    p.pop("batch", None)
    return {k: v for k, v in {**p, **extra}.items() if v is not None}


class _Tools:
    """The model's σ grid, its denoiser (guided when the request guides) and conversions, for one request."""

    def __init__(self, req: Request, loaded: Loaded):
        from kuosan.diffusion.guidance import classifier_free_guidance
        from kuosan.diffusion.samplers import get_sampler
        from kuosan.sampling import sigmas_for

        self.req, self.loaded, self.pipe = req, loaded, loaded.pipe
        s, pipe = req.sample, loaded.pipe
        self.sampler = get_sampler(s.sampler)
        self.sigmas = sigmas_for(pipe.precond, s.schedule, s.steps, s.rho).to(pipe.device, torch.float32)
        self.denoiser = loaded.denoiser or pipe.precond  # the backend's (kuosan.interop.onnx.runtime_denoiser)
        if pipe.num_classes and s.guidance != 1.0:
            self.denoiser = classifier_free_guidance(self.denoiser, s.guidance, null_label=pipe.num_classes,
                                                     interval=req.interval, rescale=s.guidance_rescale)

    def cond(self, n: int, label: int | None) -> dict:
        """Class labels for ``n`` images: ``label``, or the null class ("no class") of a conditional model."""
        if not self.pipe.num_classes:
            return {}
        k = self.pipe.num_classes if label is None else label
        return {"class_labels": torch.full((n,), k, dtype=torch.long, device=self.pipe.device)}

    def generators(self, seeds):
        from kuosan.rng import generators_for_seeds

        return generators_for_seeds(list(seeds))

    def noise(self, seeds) -> torch.Tensor:
        """Unit noise of the model's shape, one image per seed (each from its own generator)."""
        from kuosan.rng import randn

        return randn((len(seeds), *self.pipe.image_shape), self.generators(seeds), device=self.pipe.device)

    def upload(self) -> torch.Tensor:
        """The request's image in the model's space, [1, C, H, W]."""
        return self.pipe.to_model_space(torch.from_numpy(self.req.image)[None])

    def stepper(self, report, total: int, key: str = "denoised"):
        """A sampler callback that counts steps and offers ``report`` a preview of ``info[key]``."""
        done = [0]

        def step(info: dict) -> None:
            done[0] += 1
            x = info.get(key, info["x"])
            report(min(done[0], total), total, lambda: _grid(self.pipe.to_images(x.float())))

        return step

    def params(self, seed, label, **extra) -> dict:
        return image_params(self.req, self.loaded, seed, label, **extra)


def _grid(images: np.ndarray, nrow: int | None = None) -> np.ndarray:
    from kuosan.images import make_grid

    return images[0] if len(images) == 1 else make_grid(images, nrow)


def _rows(*versions: np.ndarray) -> np.ndarray:
    """Versions of each image side by side: one line per image (input | … | result)."""
    from kuosan.images import make_grid

    return make_grid(np.stack(versions, 1).reshape(-1, *versions[0].shape[1:]), nrow=len(versions))


def _generate(req: Request, t: _Tools, report) -> Made:
    from kuosan.sampling import generate

    pipe, seeds = t.pipe, list(req.seeds)
    total = (len(t.sigmas) - 1) * math.ceil(len(seeds) / req.batch)
    x = generate(pipe.precond, dataclasses.replace(req.sample, guidance=1.0), shape=pipe.image_shape, seeds=seeds,
                 class_labels=None if req.labels is None else list(req.labels), batch_size=req.batch,
                 null_label=pipe.num_classes or None, sigmas=t.sigmas, denoiser=t.denoiser,
                 sampler_options={"callback": t.stepper(report, total)})
    images = pipe.to_images(x)
    labels = [None] * len(seeds) if req.labels is None else list(req.labels)
    made = [(img, t.params(s, k)) for img, s, k in zip(images, seeds, labels)]
    return Made(made, grid=_grid(images, 8 if len(images) >= 8 else None) if len(images) > 1 else None)


def _img2img(req: Request, t: _Tools, report) -> Made:
    from kuosan.diffusion.editing import img2img, start_index

    x0, seed = t.upload(), req.seeds[0]
    k = start_index(req.sample.steps, req.strength)
    y = img2img(t.denoiser, x0, t.sigmas, req.strength, sampler=t.sampler, generator=t.generators([seed]),
                extra_args=t.cond(1, req.label), callback=t.stepper(report, max(1, req.sample.steps - k)))
    before, after = t.pipe.to_images(x0), t.pipe.to_images(y)
    return Made([(after[0], t.params(seed, req.label))], grid=_rows(before, after), inputs={"input": before[0]},
                note=f"input | result: {req.sample.steps - k} of {req.sample.steps} steps, "
                     f"from σ = {float(t.sigmas[k]):.3g}")


def _inpaint(req: Request, t: _Tools, report) -> Made:
    from kuosan.diffusion.editing import inpaint, repaint_path

    x0, seed = t.upload(), req.seeds[0]
    keep = torch.from_numpy(req.mask).to(x0.device)[None]
    path = repaint_path(req.sample.steps, req.resample, req.jump)
    total = sum(b == a + 1 for a, b in zip(path, path[1:]))
    y = inpaint(t.denoiser, x0, keep, t.sigmas, sampler=t.sampler, generator=t.generators([seed]),
                extra_args=t.cond(1, req.label), resample=req.resample, jump=req.jump,
                callback=t.stepper(report, total, key="x"))
    before, after = t.pipe.to_images(x0), t.pipe.to_images(y)
    mask = (255 * (1 - req.mask[0])).astype(np.uint8)[..., None]  # white where regenerated, as drawn
    factor = before.shape[1] // mask.shape[0]  # a latent model's mask is at its latents' size
    shown = np.repeat(np.repeat(mask, factor, 0), factor, 1).repeat(before.shape[-1], -1)[None]
    return Made([(after[0], t.params(seed, req.label))], grid=_rows(before, shown, after),
                inputs={"input": before[0], "mask": mask},
                note=f"input | mask | result: {int((req.mask == 0).sum())} pixels regenerated, resample {req.resample} "
                     f"(jump {req.jump})")


def _invert(req: Request, t: _Tools, report) -> Made:
    from kuosan.diffusion.editing import invert, psnr

    x0, n = t.upload(), req.sample.steps
    again = req.label is not None and req.label != req.source
    total = (len(t.sigmas) - 2) + (len(t.sigmas) - 1) * (2 if again else 1)  # up the grid without σ = 0, down
    step = t.stepper(report, total, key="x")
    z = invert(t.denoiser, x0, t.sigmas, sampler=t.sampler, extra_args=t.cond(1, req.source), callback=step)
    back = t.sampler(t.denoiser, z, t.sigmas, extra_args=t.cond(1, req.source), callback=step)
    pics = [t.pipe.to_images(x0), t.pipe.to_images(back)]
    made = [(pics[1][0], t.params(req.seeds[0], req.source, edit="reconstruction"))]
    if again:
        other = t.sampler(t.denoiser, z, t.sigmas, extra_args=t.cond(1, req.label), callback=step)
        pics.append(t.pipe.to_images(other))
        made.append((pics[2][0], t.params(req.seeds[0], req.label, source=req.source)))
    value = float(psnr(back, x0)[0])
    shown = "input | reconstruction" + (f" | class {req.label}" if again else "")
    return Made(made, grid=_rows(*pics), inputs={"input": pics[0][0]},
                note=f"{shown}: round-trip PSNR {value:.2f} dB ({n} {req.sample.sampler} steps each way)")


def _interpolate(req: Request, t: _Tools, report) -> Made:
    from kuosan.diffusion.editing import class_mix, slerp

    n, device = req.frames, t.pipe.device
    w = torch.linspace(0, 1, n)
    seed = req.seeds[0]
    if req.class_b is not None:
        z = t.noise([seed]).expand(n, *t.pipe.image_shape)
        den = class_mix(t.denoiser, torch.full((n,), req.label), torch.full((n,), req.class_b), w)
        extra = {}
    else:
        z0, z1 = t.noise([req.seeds[0]]), t.noise([req.seeds[1]])
        z, den, extra = slerp(z0, z1, w.to(device)), t.denoiser, t.cond(n, req.label)
    with torch.inference_mode():
        x = t.sampler(den, z * t.sigmas[0], t.sigmas, extra_args=extra, generator=t.generators([seed] * n),
                      callback=t.stepper(report, len(t.sigmas) - 1))
    images = t.pipe.to_images(x)
    made = [(img, t.params(seed, req.label, t=round(float(v), 4))) for img, v in zip(images, w)]
    what = (f"classes {req.label} -> {req.class_b}, seed {seed}" if req.class_b is not None
            else f"seeds {req.seeds[0]} -> {req.seeds[1]} (slerp)")
    return Made(made, grid=_grid(images, n), note=f"{n} frames, {what}")


def _live(req: Request, t: _Tools, report) -> Made:
    from kuosan.diffusion.editing import class_mix

    seed = req.seeds[0]
    den, extra = t.denoiser, t.cond(1, req.label)
    if req.class_b is not None and req.mix > 0:
        a = t.pipe.num_classes if req.label is None else req.label
        den, extra = class_mix(t.denoiser, torch.tensor([a]), torch.tensor([req.class_b]), torch.tensor([req.mix])), {}
    with torch.inference_mode():
        x = t.sampler(den, t.noise([seed]) * t.sigmas[0], t.sigmas, extra_args=extra,
                      generator=t.generators([seed]), callback=lambda info: report(info["i"] + 1, len(t.sigmas) - 1))
    return Made([(t.pipe.to_images(x)[0], t.params(seed, req.label))])


_MODES = {"generate": _generate, "img2img": _img2img, "inpaint": _inpaint, "invert": _invert,
          "interpolate": _interpolate, "live": _live}


def run_request(req: Request, loaded: Loaded, report=lambda done, total, preview=None: None) -> Made:
    """Make what ``req`` asks for with ``loaded``; ``report(done, total, preview)`` hears of every step."""
    with torch.inference_mode():
        return _MODES[req.mode](req, _Tools(req, loaded), report)
