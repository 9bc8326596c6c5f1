"""A request of the page, checked: JSON from the browser -> a :class:`Request`, or one KuosanError line that the
page shows beside the form. Numbers and names go through :mod:`kuosan.validation` (the checks of the command
line), classes through the model's own ``class_for`` (an index, a name, and on an ``emoji:sub`` model one of
the 9 classes' names); unknown fields are refused, not ignored.

Empty fields mean "the model's default". ``seeds`` is a seed (``5``), a list (``1,5,9``) or a range (``0-7``),
as ``kuosan sample --seeds`` reads it; a JSON number is one seed, not a count.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from kuosan.config import SampleConfig
from kuosan.diffusion.samplers import SAMPLERS, STOCHASTIC
from kuosan.errors import KuosanError
from kuosan.serve.models import Loaded
from kuosan.serve.uploads import decode_upload, fit_image, fit_mask, open_image
from kuosan.validation import LIMITS, SAMPLE_FIELDS, check_sample_request, one_of, real, whole

__all__ = ["MODES", "MAX_IMAGES", "MAX_FRAMES", "FIELDS", "Request", "parse_request"]

MODES = ("generate", "img2img", "inpaint", "invert", "interpolate", "live")
MAX_IMAGES = 64             # images one request makes: a page is not a batch job (`kuosan sample` is)
MAX_FRAMES = 32             # images in an interpolation strip
DEFAULT_BATCH = 16          # images a network call when the form leaves it empty: progress comes in small steps
FIELDS = frozenset({"mode", "model", "sampler", "steps", "schedule", "guidance", "guidance_rescale", "interval",
                    "seeds", "class", "batch", "image", "mask", "strength", "resample", "jump", "source", "class_b",
                    "mix", "frames"})


@dataclass(frozen=True, eq=False)
class Request:
    mode: str                              # one of MODES
    model: str                             # the model's name (see serve.models)
    sample: SampleConfig                   # sampler, steps, schedule, guidance: the request over the model's defaults
    interval: tuple | None                 # guide only where lo < σ <= hi (None: at every step)
    seeds: tuple                           # generate: one image per seed; the others use the first
    labels: tuple | None                   # generate: the class of each image (None: an unconditional model)
    label: int | None                      # edits and live: the class to steer to (None: no class)
    batch: int                             # images a network call
    group: str | None = None               # the class asked for by a group's name ("animals", emoji:sub models)
    image: np.ndarray | None = None        # edits: the upload as uint8 [C, H, W] at the model's pixel size
    mask: np.ndarray | None = None         # inpaint: float32 [1, h, w], 1 where to keep, 0 where to regenerate
    strength: float = 0.6                  # img2img: 0 keeps the input, 1 ignores it
    resample: int = 1                      # inpaint: RePaint resamplings per segment (1 = none)
    jump: int = 5                          # inpaint: RePaint jump length in steps
    source: int | None = None              # invert: the class of the input (None: no class)
    class_b: int | None = None             # interpolate: the second class (None: between two seeds); live: mixed in
    mix: float = 0.0                       # live: the weight of class_b, 0 to 1
    frames: int = 8                        # interpolate: images in the strip

    def params(self) -> dict:
        """The request as the form spells it: what a gallery entry or a PNG gives back to fill the form."""
        s = self.sample
        out = {"mode": self.mode, "model": self.model, "sampler": s.sampler, "steps": s.steps,
               "schedule": s.schedule, "guidance": s.guidance, "guidance_rescale": s.guidance_rescale,
               "guidance_interval": _list(self.interval),
               "seeds": ",".join(str(v) for v in self.seeds) if len(self.seeds) <= 2 else _span(self.seeds),
               "class": self.group or self.label, "batch": self.batch}
        extra = {"img2img": {"strength": self.strength}, "inpaint": {"resample": self.resample, "jump": self.jump},
                 "invert": {"source": self.source}, "interpolate": {"class_b": self.class_b, "frames": self.frames},
                 "live": {"class_b": self.class_b, "mix": self.mix}}
        return {**out, **extra.get(self.mode, {})}


def _list(v):
    return None if v is None else list(v)


def _span(seeds) -> str:
    """``0-7`` for consecutive seeds, else a comma list."""
    s = list(seeds)
    return f"{s[0]}-{s[-1]}" if s == list(range(s[0], s[0] + len(s))) else ",".join(map(str, s))


def _given(body: dict, key: str):
    """A field's value, or None when it is absent, null or an empty string (the model's default)."""
    v = body.get(key)
    return None if v is None or (isinstance(v, str) and not v.strip()) else v


def _class(pipe, value, name: str, seed: int = 0) -> int | None:
    """A class by index or name; on a model trained on finer labels (``emoji:sub``) also one of its data set's
    classes ("animals"), which gives the finer label ``seed`` draws."""
    if value is None:
        return None
    try:
        return pipe.class_for(value, seed)
    except KuosanError as e:
        raise KuosanError(f"{name}: {e}") from None


def _interval(value) -> tuple | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise KuosanError("interval must be two noise levels [low, high] (σ), or empty to guide at every step")
    if value[0] in (None, "") and value[1] in (None, ""):
        return None
    lo = real(0 if value[0] in (None, "") else value[0], "interval low σ", 0, 1e6)
    hi = real(1e6 if value[1] in (None, "") else value[1], "interval high σ", 0, 1e6)
    if not lo < hi:
        raise KuosanError(f"interval low σ {lo} must be below its high σ {hi}")
    return lo, hi


def _seeds(value) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]  # one seed: on the page a number is a seed, never a count
    return check_sample_request(seeds="0" if value is None else value)["seeds"]


def parse_request(body, loaded: Loaded) -> Request:
    """Check ``body`` (the JSON the page posts) against the loaded model; one KuosanError line if it is wrong."""
    if not isinstance(body, dict):
        raise KuosanError("a request is a JSON object of form fields")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise KuosanError(f"unknown field {unknown[0]!r}; the fields are {', '.join(sorted(FIELDS))}")
    mode = one_of(body.get("mode") or "generate", "mode", MODES)
    pipe = loaded.pipe
    req = check_sample_request(sampler=_given(body, "sampler"), steps=_given(body, "steps"),
                               schedule=_given(body, "schedule"), guidance=_given(body, "guidance"),
                               guidance_rescale=_given(body, "guidance_rescale"), batch=_given(body, "batch"))
    sample = dataclasses.replace(pipe.sample_config, **{k: req[k] for k in SAMPLE_FIELDS if req[k] is not None})
    seeds = _seeds(_given(body, "seeds"))
    given = _given(body, "class")
    label = _class(pipe, given, "class", seeds[0])
    group = given.strip().lower() if isinstance(given, str) and given.strip().lower() in pipe.groups else None
    out = dict(mode=mode, model=loaded.entry.name, sample=sample, interval=_interval(_given(body, "interval")),
               seeds=tuple(seeds), labels=None, label=label, group=group, batch=req["batch"] or DEFAULT_BATCH)
    out.update(_MODE_CHECKS[mode](body, pipe, out))
    return Request(**out)


def _generate(body, pipe, out) -> dict:
    if len(out["seeds"]) > MAX_IMAGES:
        raise KuosanError(f"{len(out['seeds'])} seeds is more than the page makes at once (at most {MAX_IMAGES}); "
                          "`kuosan sample` makes any number")
    labels = pipe.labels_for(list(out["seeds"]), out["group"] or out["label"])  # a group: each seed its own label
    return {"labels": None if labels is None else tuple(labels)}


def _upload(body, pipe, key: str = "image"):
    name = f"the {key}"
    return open_image(decode_upload(body.get(key), name), name)


def _img2img(body, pipe, out) -> dict:
    c, r, _ = pipe.pixel_shape
    return {"image": fit_image(_upload(body, pipe), c, r),
            "strength": real(0.6 if _given(body, "strength") is None else body["strength"], "strength", 0, 1)}


def _inpaint(body, pipe, out) -> dict:
    c, r, _ = pipe.pixel_shape
    mask = fit_mask(_upload(body, pipe, "mask"), pipe.image_shape[1])
    if bool((mask == 1).all()):
        raise KuosanError("the mask marks nothing to regenerate: paint over the part of the image to redo")
    return {"image": fit_image(_upload(body, pipe), c, r), "mask": mask,
            "resample": whole(_given(body, "resample") or 1, "resample", 1, 100),
            "jump": whole(_given(body, "jump") or 5, "jump", 1, LIMITS["steps"])}


def _invert(body, pipe, out) -> dict:
    if out["sample"].sampler in STOCHASTIC:
        raise KuosanError(f"inversion needs a deterministic sampler, not {out['sample'].sampler!r}; choose one of "
                          f"{', '.join(sorted(set(SAMPLERS) - set(STOCHASTIC)))}")
    c, r, _ = pipe.pixel_shape
    return {"image": fit_image(_upload(body, pipe), c, r), "source": _class(pipe, _given(body, "source"), "source",
                                                                             out["seeds"][0])}


def _interpolate(body, pipe, out) -> dict:
    class_b = _class(pipe, _given(body, "class_b"), "second class", out["seeds"][0])
    if class_b is None and len(out["seeds"]) != 2:
        raise KuosanError("interpolation wants two seeds A,B (e.g. 3,17), or a second class to go to")
    if class_b is not None and out["label"] is None:
        raise KuosanError("interpolation between classes wants a first class too")
    return {"class_b": class_b, "frames": whole(_given(body, "frames") or 8, "frames", 2, MAX_FRAMES)}


def _live(body, pipe, out) -> dict:
    class_b = _class(pipe, _given(body, "class_b"), "second class", out["seeds"][0])
    mix = real(_given(body, "mix") or 0, "mix", 0, 1)  # without a first class: from "no class" to class_b
    return {"class_b": class_b, "mix": mix}


_MODE_CHECKS = {"generate": _generate, "img2img": _img2img, "inpaint": _inpaint, "invert": _invert,
                "interpolate": _interpolate, "live": _live}
