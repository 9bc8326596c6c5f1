"""``kuosan edit``: image-to-image, inpainting, inversion and interpolation with a trained checkpoint.

:func:`register` adds the command; the mathematics lives in :mod:`kuosan.diffusion.editing`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from kuosan.errors import KuosanError
from kuosan.validation import LIMITS, check_sample_request, output_dir, real, seed_list, whole

EXAMPLES = """\
examples:
  kuosan edit img2img --checkpoint runs/fm --input shoe.png --strength 0.6 --class sandal --guidance 2
  kuosan edit inpaint --checkpoint runs/fm --input shirt.png --mask hole.png --resample 5 --jump 5
  kuosan edit inpaint --checkpoint runs/fm --input shirt.png --box 8,8,20,20
  kuosan edit invert --checkpoint runs/fm --input bag.png --steps 50          # prints the round-trip PSNR
  kuosan edit interpolate --checkpoint runs/fm --seeds 3,17 --n 8 --class 5
  kuosan edit interpolate --checkpoint runs/fm --classes "sneaker,ankle boot" --seeds 3 --n 8 --guidance 2

Images are read with Pillow and fitted to the model (channels, then resized and centre-cropped to its
resolution). Masks: white marks the region to regenerate, black the pixels to keep.
"""

MODES = ("img2img", "inpaint", "invert", "interpolate")


def _common(p: argparse.ArgumentParser, sampler: str | None, steps: int | None) -> None:
    p.add_argument("--checkpoint", required=True, help="a run directory (its latest checkpoint) or a checkpoint")
    p.add_argument("--sampler", default=sampler, help=f"sampler name (default: {sampler or 'as the model samples'})")
    p.add_argument("--steps", type=int, default=steps,
                   help=f"steps of the full σ grid (default: {steps or 'as the model samples'})")
    p.add_argument("--schedule", default=None,
                   help="σ grid: karras, exponential, log-snr, vp-linear, ... (default: the model's)")
    p.add_argument("--class", dest="class_label", default=None,
                   help="class index or name; a model trained on emoji:sub also takes the 9 classes' names "
                        "(animals: the subcategory --seed draws) (default: unconditional)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance weight with --class (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0); image k uses seed + k")
    p.add_argument("--out", default="edits", help="output directory (default ./edits)")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto", help="auto (default: CUDA if present), cpu, cuda, cuda:N")


def register(sub) -> None:
    p = sub.add_parser("edit", help="img2img, inpaint, invert or interpolate with a checkpoint",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(run=run)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``edit`` sub-modes and their options to ``parser``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    sub = parser.add_subparsers(dest="mode", metavar="MODE", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("img2img", help="noise images to a strength and denoise them (SDEdit)", formatter_class=fmt,
                       epilog="example:\n  kuosan edit img2img --checkpoint runs/fm --input a.png b.png --strength 0.5")
    p.add_argument("--input", nargs="+", required=True, help="image files")
    p.add_argument("--strength", type=float, default=0.6, help="0 keeps the input, 1 ignores it (default 0.6)")
    _common(p, None, None)

    p = sub.add_parser("inpaint", help="regenerate a masked region, keep the rest", formatter_class=fmt,
                       epilog="example:\n  kuosan edit inpaint --checkpoint runs/fm --input a.png --box 4,4,16,16 "
                              "--resample 5")
    p.add_argument("--input", nargs="+", required=True, help="image files")
    region = p.add_mutually_exclusive_group(required=True)
    region.add_argument("--mask", help="mask image: white = regenerate, black = keep")
    region.add_argument("--box", help="region to regenerate, x0,y0,x1,y1 in pixels of the model's resolution")
    p.add_argument("--resample", type=int, default=1, help="RePaint resamplings per segment (default 1 = none)")
    p.add_argument("--jump", type=int, default=5, help="RePaint jump length in steps (default 5)")
    _common(p, "ddpm", 50)

    p = sub.add_parser("invert", help="map images to noise with the ODE and back; report the round trip",
                       formatter_class=fmt,
                       epilog="example:\n  kuosan edit invert --checkpoint runs/fm --input a.png --sampler heun "
                              "--steps 50")
    p.add_argument("--input", nargs="+", required=True, help="image files")
    _common(p, "heun", 50)

    p = sub.add_parser("interpolate", help="a strip between two seeds (slerp) or two classes", formatter_class=fmt,
                       epilog="examples:\n  kuosan edit interpolate --checkpoint runs/fm --seeds 3,17 --n 8\n"
                              "  kuosan edit interpolate --checkpoint runs/fm --classes 1,7 --seeds 3")
    p.add_argument("--seeds", default=None,
                   help="two seeds A,B to interpolate between (default 0,1), or one with --classes (default 0)")
    p.add_argument("--classes", default=None,
                   help="two classes A,B to interpolate between (names or indices; on an emoji:sub model also "
                        "the 9 classes' names)")
    p.add_argument("--n", type=int, default=8, help="images in the strip (default 8)")
    _common(p, None, None)
    return parser


# --- inputs ----------------------------------------------------------------------------------------

def _open(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path)
        im.load()
    except FileNotFoundError:
        raise KuosanError(f"no such image: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise KuosanError(f"cannot read image {path}: {e}") from None
    return im


def load_pixels(path: str, channels: int, resolution: int) -> torch.Tensor:
    """An image file as uint8 [C, H, W], fitted to the model's channels and resolution."""
    from kuosan.data.transforms import pil_to_chw, resize_center_crop, to_l_or_rgb

    im = resize_center_crop(to_l_or_rgb(_open(path)), resolution)
    return torch.from_numpy(pil_to_chw(im, channels).copy())


def load_image(path: str, channels: int, resolution: int) -> torch.Tensor:
    """An image file as float32 [C, H, W] in [-1, 1], fitted to the model's channels and resolution."""
    from kuosan.data import to_model_range

    return to_model_range(load_pixels(path, channels, resolution))


def load_mask(path: str, resolution: int) -> torch.Tensor:
    """A mask file as float32 [1, H, W]: 1 where to keep (black), 0 where to regenerate (white)."""
    from kuosan.data.transforms import resize_center_crop, to_l_or_rgb

    im = resize_center_crop(to_l_or_rgb(_open(path)).convert("L"), resolution)
    return torch.from_numpy((np.asarray(im) < 128).astype(np.float32))[None]


def box_mask(text: str, resolution: int) -> torch.Tensor:
    try:
        x0, y0, x1, y1 = (int(v) for v in text.split(","))
    except ValueError:
        raise KuosanError(f"--box wants x0,y0,x1,y1 in pixels, got {text!r}") from None
    if not (0 <= x0 < x1 <= resolution and 0 <= y0 < y1 <= resolution):
        raise KuosanError(f"--box {text} is not a non-empty box inside the {resolution}x{resolution} image")
    keep = torch.ones(1, resolution, resolution)
    keep[:, y0:y1, x0:x1] = 0
    return keep


# --- model and options -------------------------------------------------------------------------------

class _Setup:
    """The loaded model, its σ grid, the (guided) denoiser and the per-image conditioning."""

    def __init__(self, args):
        import kuosan
        from kuosan.diffusion.guidance import classifier_free_guidance
        from kuosan.diffusion.samplers import get_sampler
        from kuosan.sampling import sigmas_for

        req = check_sample_request(sampler=args.sampler, steps=args.steps, schedule=args.schedule,
                                   guidance=args.guidance, prefix="--")
        self.pipe = pipe = kuosan.load(args.checkpoint, device=args.device, use_ema=not args.raw)
        s = dataclasses.replace(pipe.sample_config, **{k: req[k] for k in ("sampler", "steps", "schedule", "guidance")
                                                       if req[k] is not None})
        self.sampler, self.steps, self.guidance = s.sampler, s.steps, s.guidance
        get_sampler(self.sampler)
        self.sigmas = sigmas_for(pipe.precond, s.schedule, s.steps, s.rho).to(pipe.device, torch.float32)
        # a class name of a model trained on finer labels ("animals" on emoji:sub) gives the label of --seed
        self.label = pipe.class_for(args.class_label, args.seed) if args.class_label is not None else None
        self.denoiser = pipe.precond
        if self.label is not None and self.guidance != 1.0:
            self.denoiser = classifier_free_guidance(pipe.precond, self.guidance, null_label=pipe.num_classes)
        self.seed = args.seed

    def extra(self, n: int, label: int | None = None) -> dict:
        """Class labels for ``n`` images: ``label``, else --class, else the null class ("no class")."""
        if not self.pipe.num_classes:
            return {}
        k = label if label is not None else self.label if self.label is not None else self.pipe.num_classes
        return {"class_labels": torch.full((n,), k, dtype=torch.long, device=self.pipe.device)}

    def generators(self, n: int):
        from kuosan.rng import generators_for_seeds

        return generators_for_seeds(range(self.seed, self.seed + n))

    def inputs(self, paths) -> torch.Tensor:
        """The images in what the denoiser works on: [-1, 1] pixels, or a latent model's encoded latents."""
        c, r, _ = self.pipe.pixel_shape
        return self.pipe.to_model_space(torch.stack([load_pixels(p, c, r) for p in paths]))

    def pictures(self, x: torch.Tensor) -> np.ndarray:
        """The denoiser's space -> uint8 [N, H, W, C] (a latent model's latents decoded)."""
        return self.pipe.to_images(x.float())


def _save_rows(rows: list[np.ndarray], out: Path, name: str) -> Path:
    """One PNG with a line per image: its versions ``rows[0][i], rows[1][i], …`` (uint8 [N, H, W, C]) side by side."""
    from kuosan.images import make_grid, save_png

    pics = np.stack(rows, 1).reshape(-1, *rows[0].shape[1:])  # image i's variants next to each other
    scale = max(1, 128 // pics.shape[1])
    return save_png(make_grid(pics, nrow=len(rows)), out / name, scale=scale)


def _save_each(images: np.ndarray, paths, out: Path, suffix: str) -> list[Path]:
    from kuosan.images import save_png

    return [save_png(img, out / f"{Path(p).stem}_{suffix}.png") for img, p in zip(images, paths)]


# --- modes ----------------------------------------------------------------------------------------

def run_img2img(args, st: _Setup, out: Path) -> int:
    from kuosan.diffusion.editing import img2img, start_index

    x0 = st.inputs(args.input)
    k = start_index(st.steps, args.strength)
    y = img2img(st.denoiser, x0, st.sigmas, args.strength, sampler=st.sampler, generator=st.generators(len(x0)),
                extra_args=st.extra(len(x0)))
    before, after = st.pictures(x0), st.pictures(y)
    _save_each(after, args.input, out, "img2img")
    grid = _save_rows([before, after], out, "img2img.png")
    print(f"img2img: {len(x0)} image(s), strength {args.strength} (from σ = {float(st.sigmas[k]):.3g}, "
          f"{st.steps - k} of {st.steps} {st.sampler} steps) -> {out} ({grid.name}: input | edit)")
    return 0


def run_inpaint(args, st: _Setup, out: Path) -> int:
    from kuosan.diffusion.editing import inpaint

    res, side = st.pipe.pixel_shape[1], st.pipe.image_shape[1]
    keep_px = load_mask(args.mask, res) if args.mask else box_mask(args.box, res)  # in the image's pixels
    # a latent model regenerates every latent cell the mask touches (the decoder redraws the whole cell)
    keep = keep_px if side == res else -torch.nn.functional.adaptive_max_pool2d(-keep_px[None], side)[0]
    if bool((keep == 1).all()):
        raise KuosanError("the mask marks nothing to regenerate (white = regenerate)")
    x0 = st.inputs(args.input)
    keep = keep.to(x0.device)[None]
    y = inpaint(st.denoiser, x0, keep, st.sigmas, sampler=st.sampler, generator=st.generators(len(x0)),
                extra_args=st.extra(len(x0)), resample=args.resample, jump=args.jump)
    before, after = st.pictures(x0), st.pictures(y)
    _save_each(after, args.input, out, "inpaint")
    factor = res // side
    kept = keep[0, 0].cpu().numpy().repeat(factor, 0).repeat(factor, 1)[None, :, :, None]
    shown = (before * kept).astype(np.uint8)                     # black where regenerated
    grid = _save_rows([before, shown, after], out, "inpaint.png")
    print(f"inpaint: {len(x0)} image(s), {int((kept == 0).sum())} pixels regenerated, {st.steps} {st.sampler} steps, "
          f"resample {args.resample} (jump {args.jump}) -> {out} ({grid.name}: input | kept | result)")
    return 0


def run_invert(args, st: _Setup, out: Path) -> int:
    from kuosan.diffusion.editing import invert, psnr
    from kuosan.diffusion.samplers import get_sampler

    x0 = st.inputs(args.input)
    extra = st.extra(len(x0))
    z = invert(st.denoiser, x0, st.sigmas, sampler=st.sampler, extra_args=extra)
    back = get_sampler(st.sampler)(st.denoiser, z, st.sigmas, extra_args=extra)
    before, again = st.pictures(x0), st.pictures(back)
    if st.pipe.autoencoder is None:
        values = psnr(back, x0)
    else:  # a latent model: the decoded round trip against the decoded input (the autoencoder's own loss aside)
        values = psnr(*(torch.from_numpy(v).permute(0, 3, 1, 2).float() / 127.5 - 1 for v in (again, before)))
    _save_each(again, args.input, out, "reconstruction")
    for zi, p in zip(z.cpu().numpy(), args.input):
        np.save(out / f"{Path(p).stem}_noise.npy", zi.astype(np.float32))
    grid = _save_rows([before, again], out, "invert.png")
    space = " (decoded, against the decoded input)" if st.pipe.autoencoder is not None else ""
    for p, v in zip(args.input, values.tolist()):
        print(f"{p}: round-trip PSNR{space} {v:.2f} dB")
    print(f"invert: {st.steps} {st.sampler} steps each way, σ {float(st.sigmas[-2]):.3g} -> "
          f"{float(st.sigmas[0]):.3g}; "
          f"noise in *_noise.npy (x at σ_max) -> {out} ({grid.name}: input | reconstruction)")
    return 0


def run_interpolate(args, st: _Setup, out: Path) -> int:
    from kuosan.diffusion.editing import class_mix, slerp
    from kuosan.diffusion.samplers import get_sampler
    from kuosan.rng import generators_for_seeds, randn

    seeds = _interpolation_seeds(args)
    shape, device = st.pipe.image_shape, st.pipe.device
    t = torch.linspace(0, 1, args.n)
    fn = get_sampler(st.sampler)
    if args.classes is not None:
        names = [c for c in args.classes.split(",") if c.strip()]
        if len(names) != 2:
            raise KuosanError(f"--classes wants two classes A,B, got {args.classes!r}")
        a, b = (st.pipe.class_for(c.strip(), seeds[0]) for c in names)
        den = st.pipe.precond
        if st.guidance != 1.0:
            from kuosan.diffusion.guidance import classifier_free_guidance

            den = classifier_free_guidance(den, st.guidance, null_label=st.pipe.num_classes)
        z = randn((1, *shape), generators_for_seeds(seeds[:1]), device=device).expand(args.n, *shape)
        den = class_mix(den, torch.full((args.n,), a), torch.full((args.n,), b), t)
        x = fn(den, z * st.sigmas[0], st.sigmas, extra_args={}, generator=generators_for_seeds([seeds[0]] * args.n))
        what = f"classes {a} -> {b}, seed {seeds[0]}"
    else:
        z0, z1 = (randn((1, *shape), generators_for_seeds([s]), device=device) for s in seeds)
        z = slerp(z0, z1, t.to(device))
        # --class as a group's name ("animals" on an emoji:sub model): the label of the strip's first seed
        label = st.pipe.class_for(args.class_label, seeds[0]) if args.class_label is not None else None
        x = fn(st.denoiser, z * st.sigmas[0], st.sigmas, extra_args=st.extra(args.n, label),
               generator=generators_for_seeds([seeds[0]] * args.n))
        what = f"seeds {seeds[0]} -> {seeds[1]} (slerp)"
    from kuosan.images import make_grid, save_png

    pics = st.pictures(x)
    path = save_png(make_grid(pics, nrow=args.n), out / "interpolate.png", scale=max(1, 128 // pics.shape[1]))
    print(f"interpolate: {args.n} images, {what}, {st.steps} {st.sampler} steps -> {path}")
    return 0


def _interpolation_seeds(args) -> list[int]:
    """Two seeds A,B to interpolate between, or one with --classes (the mix of two classes from one noise)."""
    want = 1 if args.classes is not None else 2
    text = args.seeds if args.seeds is not None else ("0" if want == 1 else "0,1")
    seeds = seed_list(text, "--seeds")
    if len(seeds) != want:
        wanted = "one seed with --classes" if want == 1 else "two seeds A,B to interpolate between"
        raise KuosanError(f"--seeds wants {wanted}, got {text!r}")
    return seeds


def _check_numbers(args) -> None:
    """The mode's own numbers, checked before the model loads (sampling ones in :class:`_Setup`)."""
    images = len(getattr(args, "input", None) or ()) or 1
    whole(args.seed, "--seed", 0, LIMITS["seed"] - images + 1)  # image k uses seed + k
    if hasattr(args, "strength"):
        real(args.strength, "--strength", 0, 1)
    if hasattr(args, "resample"):
        whole(args.resample, "--resample", 1, 100)
        whole(args.jump, "--jump", 1, LIMITS["steps"])
    if hasattr(args, "n"):
        whole(args.n, "--n", 2, 1024)
        _interpolation_seeds(args)
        if args.classes is not None and args.class_label is not None:
            raise KuosanError("give --class (one class for the strip) or --classes A,B (a mix of two), not both")


def run(args) -> int:
    """Run the ``edit`` sub-mode in ``args.mode``; user mistakes raise :class:`KuosanError`."""
    if getattr(args, "mode", None) not in MODES:
        raise KuosanError(f"choose a mode: {', '.join(MODES)}")
    out = output_dir(args.out)
    _check_numbers(args)
    st = _Setup(args)
    out.mkdir(parents=True, exist_ok=True)
    return {"img2img": run_img2img, "inpaint": run_inpaint, "invert": run_invert,
            "interpolate": run_interpolate}[args.mode](args, st, out)
