"""Latent diffusion's data side (Rombach et al. 2022, §3-4): a trained autoencoder, data sets encoded once
into its scaled latent space and cached, and decoding back to pixels.

    ae = load_autoencoder("runs/ae")                    # LatentAutoencoder: encode / decode / scale
    data = encode_dataset("runs/ae", "fashion-mnist")   # LatentDataset, quacks like ImageDataset
    images = ae.decode_uint8(latents)                   # uint8 [N, C, H, W]

Latents are the posterior means μ(x) times the *latent scale* s = 1 / std(μ) measured over the autoencoder's
training set (``config.json["latent"]["scale"]``; Rombach et al. 2022, §4.3.2 and Appendix D.1), so a
diffusion model sees data of unit standard deviation (use ``sigma_data = 1``). Encoded sets are cached in
``$KUOSAN_CACHE/latents`` (default ``~/.cache/kuosan/latents``) under a name made of the data set's
fingerprint and the autoencoder's weights checksum: another autoencoder (or the same one trained on)
gets another file. Latent-space tools at the end: interpolation between two real images and class
arithmetic (mean latent of class A - that of class B + an image's latent), each saved as a PNG strip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from kuosan.data.dataset import ImageShape
from kuosan.checkpoint import file_sha256
from kuosan.errors import KuosanError, cache_root
from kuosan.records import RunConfig, recorded_sha256

__all__ = ["LatentAutoencoder", "LatentDataset", "load_autoencoder", "encode_dataset", "autoencoder_for_checkpoint",
           "latent_statistics", "reconstruction_metrics", "latent_cache_dir", "interpolate", "class_means",
           "class_arithmetic", "save_strip", "reconstruction_report"]

FORMAT = "kuosan-autoencoder"


def _as_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]; float input is taken to be in [-1, 1] already."""
    return images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images.float()


class LatentAutoencoder:
    """A trained autoencoder with its latent scale: ``encode`` images to scaled latents, ``decode`` them back.

    ``checksum`` is the SHA-256 of the weights file in use (as recorded in the checkpoint's state.json),
    ``config_sha256`` that of its config.json (which holds the scale).
    """

    def __init__(self, net, config: dict, path: Path, checksum: str, config_sha256: str):
        self.net, self.config, self.path = net.eval().requires_grad_(False), config, Path(path)
        self.checksum, self.config_sha256 = checksum, config_sha256
        self.scale = float(config["latent"]["scale"])

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.net.cfg.in_channels, self.net.cfg.resolution, self.net.cfg.resolution)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.net.latent_shape

    def reference(self) -> dict:
        """What a latent diffusion checkpoint records in its config.json under ``"autoencoder"``."""
        return {"path": str(self.path.resolve()), "sha256": self.checksum, "config_sha256": self.config_sha256,
                "scale": self.scale, "image_shape": list(self.image_shape), "latent_shape": list(self.latent_shape)}

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int = 256, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 (or [-1, 1] float) images [N, C, H, W] -> scaled latents float32 [N, c, h, w] on the CPU:
        s·μ(x), or s·z with z ~ q(z|x) when ``sample``."""
        if tuple(images.shape[1:]) != self.image_shape:
            c, h, _ = self.image_shape
            raise KuosanError(f"the autoencoder {self.path} takes {c}x{h}x{h} images, got "
                              f"{'x'.join(map(str, images.shape[1:]))}; load the data with resolution={h}, "
                              f"channels={c}")
        out = []
        for i in range(0, len(images), batch_size):
            q = self.net.encode(_as_model_range(images[i:i + batch_size].to(self.device)))
            out.append((q.sample(generator) if sample else q.mean).float().cpu() * self.scale)
        return torch.cat(out) if out else torch.zeros(0, *self.latent_shape)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Scaled latents [N, c, h, w] -> images float32 [N, C, H, W] on the CPU, nominally in [-1, 1]."""
        if tuple(latents.shape[1:]) != self.latent_shape:
            raise KuosanError(f"the autoencoder {self.path} decodes latents of shape {list(self.latent_shape)}, "
                              f"got {list(latents.shape[1:])}")
        out = [self.net.decode(latents[i:i + batch_size].to(self.device, torch.float32) / self.scale).float().cpu()
               for i in range(0, len(latents), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, *self.image_shape)

    def decode_uint8(self, latents: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Scaled latents -> uint8 images [N, C, H, W] (clamped and rounded)."""
        from kuosan.data import to_uint8

        return to_uint8(self.decode(latents, batch_size))

    def decode_nhwc(self, latents: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Scaled latents -> uint8 numpy [N, H, W, C], as ``kuosan.images.to_uint8_nhwc`` gives for pixels."""
        return self.decode_uint8(latents, batch_size).permute(0, 2, 3, 1).numpy()

    def __repr__(self) -> str:
        return (f"LatentAutoencoder({str(self.path)!r}, {'x'.join(map(str, self.image_shape))} -> "
                f"{'x'.join(map(str, self.latent_shape))}, scale={self.scale:.4g})")


def load_autoencoder(path, device=None, use_ema: bool = True) -> LatentAutoencoder:
    """The autoencoder checkpoint at ``path`` (a checkpoint directory or a ``train-autoencoder`` run directory)."""
    from kuosan.nets.autoencoder import Autoencoder, AutoencoderConfig
    from kuosan.nets.layout import prepare_model
    from kuosan.checkpoint import read_checkpoint, read_config_json, resolve_checkpoint
    from kuosan.runtime import resolve_device

    ckpt = resolve_checkpoint(path)
    config = read_config_json(ckpt)
    if config.get("format") != FORMAT:
        raise KuosanError(f"{ckpt} is not an autoencoder checkpoint (config.json format {config.get('format')!r}, "
                          f"expected {FORMAT!r}); train one with `kuosan train-autoencoder`")
    record = RunConfig.from_dict(config, where=str(ckpt / "config.json"))
    if not isinstance(record.latent, dict) or "scale" not in record.latent:
        raise KuosanError(f"{ckpt / 'config.json'} records no latent scale; it was not written by train-autoencoder")
    saved = read_checkpoint(ckpt, weights="ema" if use_ema else "model")
    name = "ema.safetensors" if use_ema and (ckpt / "ema.safetensors").is_file() else "model.safetensors"
    fields = dict(record.network.fields)
    fields["channel_mults"] = tuple(fields["channel_mults"])
    net = Autoencoder(AutoencoderConfig(**fields))
    tensors = {k: v for k, v in saved["weights"].items() if not k.startswith("discriminator.")}
    try:
        net.load_state_dict(tensors)
    except RuntimeError as e:
        raise KuosanError(f"{ckpt / name} does not fit the autoencoder in its config.json: "
                          f"{str(e).splitlines()[0]}") from None
    device = resolve_device(str(device) if device is not None else "auto")
    return LatentAutoencoder(prepare_model(net.to(device)), config, ckpt, recorded_sha256(ckpt, name),
                             file_sha256(ckpt / "config.json"))


def autoencoder_for_checkpoint(record: RunConfig, ckpt, override=None, device=None) -> LatentAutoencoder | None:
    """The autoencoder a latent diffusion checkpoint's record names (None for a pixel model), checked
    against the recorded checksum. ``override``: its new location, when it was moved."""
    ref = record.autoencoder
    if not ref:
        return None
    path = Path(override or ref.get("path", ""))
    fix = (f"pass its new location (kuosan.load(..., autoencoder=DIR), or --autoencoder DIR) or edit "
           f"\"autoencoder\": {{\"path\": ...}} in {Path(ckpt) / 'config.json'}")
    if not path.exists():
        raise KuosanError(f"{ckpt} is a latent diffusion model and decodes with the autoencoder {path}, which is "
                          f"missing (moved or deleted?): {fix}")
    ae = load_autoencoder(path, device=device)
    if ref.get("sha256") and ae.checksum != ref["sha256"]:
        raise KuosanError(f"the autoencoder at {ae.path} is not the one {ckpt} was trained with (weights sha256 "
                          f"{ae.checksum[:12]}, recorded {str(ref['sha256'])[:12]}): its latents would decode to "
                          f"nonsense; {fix}")
    if ref.get("scale") is not None and abs(ae.scale - float(ref["scale"])) > 1e-6 * abs(ae.scale):
        raise KuosanError(f"the autoencoder at {ae.path} has latent scale {ae.scale:.6g}, {ckpt} was trained with "
                          f"{float(ref['scale']):.6g}; {fix}")
    return ae


# --- statistics ---------------------------------------------------------------------------------

@torch.no_grad()
def latent_statistics(net, images_uint8: torch.Tensor, batch_size: int = 256) -> dict:
    """Mean, standard deviation and scale s = 1 / std of the posterior means μ(x) over ``images``
    (all latent entries pooled; Rombach et al. 2022 rescale by the standard deviation of a first batch,
    §4.3.2 and Appendix D.1; here it is measured on the data). Float64 accumulation."""
    device = next(net.parameters()).device
    total, total_sq, n = 0.0, 0.0, 0
    for i in range(0, len(images_uint8), batch_size):
        mu = net.encode(_as_model_range(images_uint8[i:i + batch_size].to(device))).mean.double()
        total, total_sq, n = total + float(mu.sum()), total_sq + float(mu.square().sum()), n + mu.numel()
    mean = total / n
    std = max(total_sq / n - mean ** 2, 0.0) ** 0.5
    if not std > 0:
        raise KuosanError("the autoencoder's latents are constant on its training data: it has not learnt anything")
    return {"scale": 1.0 / std, "std": std, "mean": mean, "images": len(images_uint8), "of": "posterior means"}


@torch.no_grad()
def reconstruction_metrics(ae: LatentAutoencoder, images_uint8: torch.Tensor, batch_size: int = 256) -> dict:
    """PSNR (dB) and SSIM of encode -> decode on uint8 images, both in [0, 1] after rounding to uint8."""
    from kuosan.evaluation.metrics import psnr, ssim

    recon = ae.decode_uint8(ae.encode(images_uint8, batch_size), batch_size)
    a, b = images_uint8.double() / 255, recon.double() / 255
    return {"psnr": psnr(a, b), "ssim": ssim(a, b), "images": len(images_uint8)}


def reconstruction_report(run_dir, log=print, n_images: int = 2000) -> dict:
    """PSNR and SSIM on held-out images (the data set's test split, else training images), written to
    ``RUN/reconstruction.json`` beside a ``reconstructions.png`` (originals above, reconstructions below)."""
    from kuosan.data import load_dataset
    from kuosan.images import make_grid, save_png
    from kuosan.checkpoint import atomic_write_text

    ae = load_autoencoder(run_dir, device="cpu")
    c, res, _ = ae.image_shape
    spec, root = ae.config["data"]["spec"], ae.config["train"].get("data_root")
    try:
        data, split = load_dataset(spec, "test", root=root, resolution=res, channels=c, max_images=n_images), "test"
    except KuosanError:
        data, split = load_dataset(spec, "train", root=root, resolution=res, channels=c, max_images=n_images), "train"
    report = {**reconstruction_metrics(ae, data.images), "data": data.name, "held_out": split == "test"}
    atomic_write_text(Path(run_dir) / "reconstruction.json", json.dumps(report, indent=2))
    shown = data.images[:16]
    pair = torch.cat([shown, ae.decode_uint8(ae.encode(shown))]).permute(0, 2, 3, 1).numpy()
    save_png(make_grid(pair, nrow=16), Path(run_dir) / "reconstructions.png", scale=2)
    log(f"reconstruction on {data.name} ({report['images']} images): PSNR {report['psnr']:.2f} dB, "
        f"SSIM {report['ssim']:.4f}")
    return report


# --- latent data sets ---------------------------------------------------------------------------

@dataclass
class LatentDataset(ImageShape):
    """A data set encoded into an autoencoder's scaled latent space; quacks like :class:`ImageDataset`.

    ``images`` holds float32 latents [N, c, h, h] (unit standard deviation on the autoencoder's training
    data), already in the model's range: ``is_latent`` tells the training loop not to rescale them.
    ``autoencoder`` is what the diffusion checkpoint records (:meth:`LatentAutoencoder.reference`).
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    name: str
    autoencoder: dict
    is_latent: ClassVar[bool] = True

    def subset(self, idx) -> "LatentDataset":
        return LatentDataset(self.images[idx].contiguous(), self.labels[idx], self.class_names, self.name,
                             self.autoencoder)

    def __repr__(self) -> str:
        return (f"LatentDataset({self.name!r}, {len(self)} latents {self.channels}x{self.resolution}x"
                f"{self.resolution}, {self.num_classes} classes)")


def latent_cache_dir() -> Path:
    """``$KUOSAN_CACHE/latents``, else ``~/.cache/kuosan/latents``."""
    return cache_root("latents")


def _read_cache(path: Path, ae: LatentAutoencoder) -> LatentDataset | None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            latents, labels = f.get_tensor("latents"), f.get_tensor("labels")
        if meta.get("sha256") != ae.checksum or meta.get("config_sha256") != ae.config_sha256:
            return None
        return LatentDataset(latents, labels, json.loads(meta["class_names"]), meta["name"], ae.reference())
    except (OSError, ValueError, KeyError, SafetensorError):
        return None                                    # unreadable or foreign: encode again


def _write_cache(path: Path, data: LatentDataset, ae: LatentAutoencoder) -> None:
    """Save ``data`` as the cache file ``path``, atomically (a temporary file beside it, renamed over it).

    The cache only saves time, so a write that fails (a full disk, a quota, a read-only cache folder) warns
    once, removes its temporary file and lets the run go on without the cache; an interrupt removes the
    temporary file and propagates."""
    import warnings

    from safetensors.torch import save

    from kuosan.checkpoint import atomic_write_bytes, write_failure

    meta = {"class_names": json.dumps(data.class_names), "name": data.name, "sha256": ae.checksum,
            "config_sha256": ae.config_sha256, "scale": repr(ae.scale)}
    blob = save({"latents": data.images.contiguous(), "labels": data.labels.contiguous()}, metadata=meta)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, blob)
    except OSError as e:
        what, _ = write_failure(e)
        warnings.warn(f"{what} while writing the latent cache {path}; continuing without it (KUOSAN_CACHE "
                      "chooses where the cache goes)", stacklevel=3)


def encode_dataset(autoencoder, data_spec: str, split: str | None = "train", *, root: str | None = None,
                   max_images: int | None = None, device="cpu", batch_size: int = 256,
                   use_cache: bool = True, log=None) -> LatentDataset:
    """Encode a data set spec (see :func:`kuosan.data.load_dataset`) with ``autoencoder`` (a directory or a
    :class:`LatentAutoencoder`) at the autoencoder's resolution and channels; cached on disk."""
    from kuosan.data import dataset_fingerprint, load_dataset

    ae = autoencoder if isinstance(autoencoder, LatentAutoencoder) else load_autoencoder(autoencoder, device=device)
    c, res, _ = ae.image_shape
    fingerprint = dataset_fingerprint(data_spec, split, root=root, resolution=res, channels=c, max_images=max_images)
    path = latent_cache_dir() / f"{fingerprint}--ae-{ae.checksum[:16]}-{ae.config_sha256[:8]}.safetensors"
    if use_cache and path.is_file():
        cached = _read_cache(path, ae)
        if cached is not None:
            return cached
    images = load_dataset(data_spec, split, root=root, resolution=res, channels=c, max_images=max_images)
    if log:
        log(f"encoding {images.name} ({len(images)} images) with {ae.path} ...")
    data = LatentDataset(ae.encode(images.images, batch_size), images.labels.clone(), images.class_names,
                         images.name, ae.reference())
    if use_cache:
        _write_cache(path, data, ae)
    return data


# --- latent-space tools -------------------------------------------------------------------------

def interpolate(ae: LatentAutoencoder, image_a: torch.Tensor, image_b: torch.Tensor, steps: int = 8,
                spherical: bool = False) -> torch.Tensor:
    """Encode two images [C, H, W], decode ``steps`` latents from z_a to z_b (linear, or slerp with
    ``spherical``): uint8 [steps + 2, C, H, W], the two originals at the ends."""
    from kuosan.diffusion.editing import slerp

    if steps < 2:
        raise KuosanError(f"interpolation needs at least 2 steps, got {steps}")
    z = ae.encode(torch.stack([image_a, image_b]))
    t = torch.linspace(0, 1, steps).view(-1, 1, 1, 1)
    path = slerp(z[:1], z[1:], t) if spherical else (1 - t) * z[:1] + t * z[1:]
    return torch.cat([image_a[None], ae.decode_uint8(path), image_b[None]])


def class_means(data: LatentDataset) -> torch.Tensor:
    """Mean latent of every class, float32 [K, c, h, w] (classes without members get zeros)."""
    sums = torch.zeros(data.num_classes, *data.images.shape[1:]).index_add_(0, data.labels, data.images)
    counts = torch.bincount(data.labels, minlength=data.num_classes).clamp(min=1).view(-1, 1, 1, 1)
    return sums / counts


def class_arithmetic(ae: LatentAutoencoder, images: torch.Tensor, means: torch.Tensor, add: int,
                     subtract: int) -> torch.Tensor:
    """z(x) + mean_add - mean_subtract, decoded (attribute vectors from class means, White 2016, "Sampling
    Generative Networks"): one row [original, reconstruction, result] per image, uint8 [N, 3, C, H, W]."""
    z = ae.encode(images)
    recon, moved = ae.decode_uint8(z), ae.decode_uint8(z + means[add] - means[subtract])
    return torch.stack([images.cpu(), recon, moved], dim=1)


def save_strip(rows: torch.Tensor, path, scale: int = 3) -> Path:
    """uint8 images [N, C, H, W] (one strip) or [R, N, C, H, W] (R strips, one per row) -> PNG."""
    from kuosan.images import make_grid, save_png

    rows = rows[None] if rows.dim() == 4 else rows
    flat = rows.reshape(-1, *rows.shape[2:]).permute(0, 2, 3, 1).numpy()
    return save_png(make_grid(flat, nrow=rows.shape[1]), path, scale=scale)
