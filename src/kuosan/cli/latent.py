"""``kuosan train-autoencoder`` and ``kuosan latent``: the command-line side of latent diffusion.

:func:`register` adds both commands. ``add_arguments(parser)`` / ``run(args)`` train an autoencoder; ``add_latent_arguments(parser)`` /
``run_latent(args)`` hold the latent-space tools (encode a data set into the cache, interpolate, class
arithmetic). Thin: parse, call :mod:`kuosan.training.autoencoder` and :mod:`kuosan.latent`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path

from kuosan.cli.options import help_text
from kuosan.errors import KuosanError

TRAIN_EXAMPLES = """examples:
  kuosan train-autoencoder --data fashion-mnist --out runs/ae-fm --steps 5000
  kuosan train-autoencoder --config emoji --out runs/ae-emoji            (64x64 colour, EfficientNet + GAN)
  kuosan train-autoencoder --config digits-tiny --out runs/ae-digits    (seconds)
  kuosan train-autoencoder --out runs/ae-fm --resume
then train a diffusion model in its latent space:
  kuosan train --config fashion-mnist --autoencoder runs/ae-fm --sigma_data 1 --out runs/ldm-fm
presets: fashion-mnist (default), emoji, digits-tiny; --config also takes a JSON file of the options below
"""

LATENT_EXAMPLES = """examples:
  kuosan latent encode --autoencoder runs/ae-fm --data fashion-mnist            (fill the latent cache)
  kuosan latent interpolate --autoencoder runs/ae-fm --a 0 --b 1 --steps 8 --out interp.png
  kuosan latent arithmetic --autoencoder runs/ae-fm --add "Ankle boot" --subtract Sneaker --out boots.png
"""


def _field_type(tp):
    """An argparse ``type`` for a config field's annotation (Optional[...] unwrapped)."""
    if typing.get_origin(tp) is typing.Union:
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if tp is tuple:
        return _number_list
    return {int: _text_number, float: _text_number, str: str}[tp]


def _text_number(text: str) -> str:
    """Numbers stay text here; :func:`kuosan.training.autoencoder.check_options` reads them with the one rule
    for every door."""
    return text


def _number_list(text: str) -> tuple:
    """``1,2,2`` or ``(0.9, 0.99)`` -> a tuple of the numbers' texts, checked by
    :func:`kuosan.training.autoencoder.check_options`."""
    return tuple(v.strip() for v in text.replace("(", "").replace(")", "").split(",") if v.strip())


def register(sub) -> None:
    p = sub.add_parser("train-autoencoder", help="train an autoencoder for latent diffusion")
    add_arguments(p)
    p.set_defaults(run=run)
    p = sub.add_parser("latent", help="latent-space tools: encode, interpolate, class arithmetic")
    add_latent_arguments(p)
    p.set_defaults(run=run_latent)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``kuosan train-autoencoder``: ``--config``, ``--resume`` and one per config field."""
    from kuosan.training.autoencoder import AutoencoderTrainConfig

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = TRAIN_EXAMPLES
    parser.add_argument("--config", default="fashion-mnist",
                        help="a preset name or a JSON file (default fashion-mnist)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    parser.add_argument("--allow-changes", action="store_true",
                        help="with --resume: accept settings that differ from the run's (recorded in its history.jsonl)")
    hints = typing.get_type_hints(AutoencoderTrainConfig)
    for f in dataclasses.fields(AutoencoderTrainConfig):
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        parser.add_argument(*names, dest=f"ae_{f.name}", type=_field_type(hints[f.name]), default=None,
                            metavar=f.name.upper(), help=help_text(AutoencoderTrainConfig, f.name))


def _base_options(name: str) -> dict:
    from kuosan.training.autoencoder import PRESETS

    if name in PRESETS:
        return dict(PRESETS[name])
    path = Path(name)
    if not path.is_file():
        raise KuosanError(f"--config {name!r} is neither a preset ({', '.join(PRESETS)}) nor a JSON file")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise KuosanError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
    if isinstance(data, dict) and data.get("format") == "kuosan-autoencoder":
        data = data.get("train", {})                     # a run's own config.json
    if not isinstance(data, dict):
        raise KuosanError(f"{path} must hold a JSON object of train-autoencoder options")
    return data


def config_from_args(args) -> "AutoencoderTrainConfig":  # noqa: F821
    from kuosan.training.autoencoder import AutoencoderTrainConfig, check_options

    options = _base_options(args.config)
    known = {f.name for f in dataclasses.fields(AutoencoderTrainConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise KuosanError(f"unknown train-autoencoder option(s) in {args.config}: {', '.join(unknown)}")
    options.update({k: getattr(args, f"ae_{k}") for k in known if getattr(args, f"ae_{k}", None) is not None})
    if getattr(args, "ae_downsample", None) is not None and getattr(args, "ae_channel_mults", None) is None:
        options.pop("channel_mults", None)               # a new factor takes its default widths
    check_options(options, args.config)
    for key in ("betas", "channel_mults"):
        if options.get(key) is not None:
            options[key] = tuple(options[key])
    return AutoencoderTrainConfig(**options)


def run(args) -> int:
    """``kuosan train-autoencoder``: train, then report reconstruction PSNR/SSIM on held-out images."""
    from kuosan.latent import reconstruction_report
    from kuosan.training.autoencoder import train_autoencoder

    cfg = config_from_args(args)
    out = train_autoencoder(cfg, resume=args.resume, allow_changes=args.allow_changes)
    reconstruction_report(out)
    print(f"autoencoder: {out} (use it with `kuosan train --autoencoder {out} --sigma_data 1 ...`)")
    return 0


# --- kuosan latent ------------------------------------------------------------------------------

def add_latent_arguments(parser: argparse.ArgumentParser) -> None:
    """``kuosan latent encode | interpolate | arithmetic``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = LATENT_EXAMPLES
    sub = parser.add_subparsers(dest="latent_command", metavar="TOOL")

    def common(p, data_help):
        p.add_argument("--autoencoder", required=True, help="an autoencoder checkpoint or train-autoencoder run")
        p.add_argument("--data", default=None, help=data_help)
        p.add_argument("--data-root", dest="data_root", default=None, help="directory of the data set's files")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")

    p = sub.add_parser("encode", help="encode a data set once into the latent cache")
    common(p, "data set spec (default: the autoencoder's training set)")
    p.add_argument("--split", default="train")
    p = sub.add_parser("interpolate", help="decode the straight line between two real images' latents")
    common(p, "data set spec (default: the test split of the autoencoder's data)")
    p.add_argument("--a", type=int, default=0, help="index of the first image (default 0)")
    p.add_argument("--b", type=int, default=1, help="index of the second image (default 1)")
    p.add_argument("--steps", type=int, default=8, help="decoded points between them (default 8)")
    p.add_argument("--slerp", action="store_true", help="spherical instead of linear interpolation")
    p.add_argument("--out", default="interpolation.png")
    p = sub.add_parser("arithmetic", help="image latent + mean latent of class A - mean latent of class B")
    common(p, "data set spec of the images to edit (default: the test split of the autoencoder's data)")
    p.add_argument("--add", required=True, help="class A (name or index): its mean latent is added")
    p.add_argument("--subtract", required=True, help="class B (name or index): its mean latent is subtracted")
    p.add_argument("--n", type=int, default=6, help="how many images of class B to edit (default 6)")
    p.add_argument("--images", default=None, help="indices of the images to edit instead, e.g. 0,5,9")
    p.add_argument("--out", default="arithmetic.png")


def _class(name_or_index: str, names: list[str]) -> int:
    lowered = [n.lower() for n in names]
    if name_or_index.lower() in lowered:
        return lowered.index(name_or_index.lower())
    try:
        k = int(name_or_index)
    except ValueError:
        k = -1
    if not 0 <= k < len(names):
        raise KuosanError(f"unknown class {name_or_index!r}; classes: {', '.join(names)}")
    return k


def _images(ae, spec, root, split="test"):
    from kuosan.data import load_dataset

    c, res, _ = ae.image_shape
    spec = spec or ae.config["data"]["spec"]
    root = root or ae.config["train"].get("data_root")
    try:
        return load_dataset(spec, split, root=root, resolution=res, channels=c)
    except KuosanError:
        if split == "test" and ":" not in spec:          # a folder or .npz has no test split
            return load_dataset(spec, "train", root=root, resolution=res, channels=c)
        raise


def run_latent(args) -> int:
    from kuosan import latent

    from kuosan.validation import output_file, whole

    if not getattr(args, "latent_command", None):
        raise KuosanError("say which tool: kuosan latent encode | interpolate | arithmetic (see --help)")
    if args.data is not None and not args.data.strip():
        raise KuosanError("--data is empty; give a data set spec (fashion-mnist, digits, a folder, an .npz)")
    ae = latent.load_autoencoder(args.autoencoder, device=args.device)
    if args.latent_command == "encode":
        spec = args.data or ae.config["data"]["spec"]
        data = latent.encode_dataset(ae, spec, args.split, root=args.data_root or ae.config["train"].get("data_root"),
                                     log=print)
        print(f"{data!r}: std {float(data.images.std()):.3f}, cached in {latent.latent_cache_dir()}")
        return 0
    if args.latent_command == "interpolate":
        whole(args.steps, "--steps", 2, 1024)
    else:
        whole(args.n, "--n", 1, 1024)
    output_file(args.out)
    images = _images(ae, args.data, args.data_root)
    if args.latent_command == "interpolate":
        for k in (args.a, args.b):
            if not 0 <= k < len(images):
                raise KuosanError(f"image index {k} out of range: {images.name} has {len(images)} images")
        strip = latent.interpolate(ae, images.images[args.a], images.images[args.b], args.steps, args.slerp)
        print(f"interpolation {images.name}[{args.a}] -> [{args.b}]: {latent.save_strip(strip, args.out)}")
        return 0
    train = latent.encode_dataset(ae, ae.config["data"]["spec"], "train", root=ae.config["train"].get("data_root"))
    add, subtract = _class(args.add, train.class_names), _class(args.subtract, train.class_names)
    if args.images is not None:
        idx = [whole(v.strip(), "an index in --images", 0, len(images) - 1) for v in args.images.split(",")
               if v.strip()]
        if not idx or len(idx) > 1024:
            raise KuosanError(f"--images wants 1 to 1024 indices like 0,5,9, got {args.images!r}")
    else:
        idx = (images.labels == subtract).nonzero().flatten()[:args.n].tolist()
        if not idx:
            raise KuosanError(f"{images.name} has no image of class {train.class_names[subtract]!r}; pass --images")
    rows = latent.class_arithmetic(ae, images.images[idx], latent.class_means(train), add, subtract)
    path = latent.save_strip(rows, args.out)
    print(f"+ {train.class_names[add]} - {train.class_names[subtract]} on {len(idx)} images of {images.name} "
          f"(columns: original, reconstruction, result): {path}")
    return 0
