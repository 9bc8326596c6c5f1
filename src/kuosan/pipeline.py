"""The Python API: ``kuosan.load(DIR).sample(...)``."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from kuosan.checkpoint import resolve_checkpoint
from kuosan.config import SampleConfig
from kuosan.diffusion.samplers import nfe
from kuosan.errors import KuosanError
from kuosan.interop import looks_like_hub_name, require_local_dir
from kuosan.interop.diffusers import diffusers_model, is_diffusers_dir
from kuosan.interop.onnx import BACKENDS, default_backend, runtime_denoiser
from kuosan.latent import autoencoder_for_checkpoint
from kuosan.model import model_from_checkpoint_config, read_model_checkpoint
from kuosan.nets.layout import prepare_model
from kuosan.nets.lora import mix_adapters
from kuosan.records import RunConfig, recorded_sha256
from kuosan.runtime import resolve_device
from kuosan.sampling import generate, generate_distributed
from kuosan.validation import SAMPLE_FIELDS, adapter_list, check_sample_request, check_sampler_options, one_of, whole

__all__ = ["Pipeline", "SampleResult"]

DEFAULT_BATCH = 64  # images a sampling call runs at once when batch_size is None


@dataclass
class SampleResult:
    images: np.ndarray            # uint8 [N, H, W, C]
    labels: np.ndarray | None     # int64 [N] (the class asked for), or None when unconditional
    seeds: list[int]
    nfe: int                      # network evaluations per image (guidance counts as one)
    seconds: float                # wall time of sampling
    params: dict = dataclasses.field(default_factory=dict)  # what made them (model, checksum, sampler, …):
                                  # written into every PNG (kuosan.pnginfo), so a PNG says how to make it again

    def save(self, out_dir: str | Path, grid_cols: int | None = None) -> dict:
        """One PNG per seed, ``grid.png``, and ``samples.npz`` (images uint8 NHWC, labels, seeds).

        Each file is written to a temporary file beside it and renamed into place, so an interrupt, SIGTERM
        or a full disk at any moment leaves only complete files (and a KeyboardInterrupt no temporary one).
        A failed write (disk full, quota, read-only file system) raises a one-line KuosanError saying how
        far it got. Temporary files that a killed earlier save left here are removed first."""
        import io
        import os

        from kuosan.checkpoint import atomic_write_bytes, write_failure
        from kuosan.images import encode_png, make_grid

        out = Path(out_dir)
        names = [f"seed{seed:06d}.png" for seed in self.seeds]
        ours = set(names) | {"grid.png", "samples.npz"}
        done, current = 0, out
        try:
            out.mkdir(parents=True, exist_ok=True)
            for stale in out.glob(".*.tmp*"):  # atomic_write_bytes names them ".NAME.tmpPID"
                name, _, pid = stale.name[1:].rpartition(".tmp")
                if name in ours and pid.isdigit() and int(pid) != os.getpid() and stale.is_file():
                    try:
                        os.kill(int(pid), 0)
                    except ProcessLookupError:
                        stale.unlink(missing_ok=True)
                    except OSError:
                        pass
            labels = [None] * len(names) if self.labels is None else [int(c) for c in self.labels]
            for img, name, seed, label in zip(self.images, names, self.seeds, labels):
                current = out / name
                params = {**self.params, "seed": int(seed), **({} if label is None else {"class": label})}
                atomic_write_bytes(current, encode_png(img, params=params), durable=False)
                done += 1
            current = grid = out / "grid.png"
            atomic_write_bytes(grid, encode_png(make_grid(self.images, grid_cols), scale=2,
                                                params={**self.params, "seeds": [int(x) for x in self.seeds]}),
                               durable=False)
            current = npz = out / "samples.npz"
            arrays = {"images": self.images, "seeds": np.asarray(self.seeds, dtype=np.int64)}
            if self.labels is not None:
                arrays["labels"] = self.labels
            buf = io.BytesIO()
            np.savez_compressed(buf, **arrays)
            atomic_write_bytes(npz, buf.getbuffer())
        except OSError as e:
            what, fix = write_failure(e)
            raise KuosanError(f"{what} while writing {current}: {done} of {len(names)} images saved, each complete, "
                              f"nothing partial left; {fix} and sample again") from None
        return {"dir": out, "grid": grid, "npz": npz}


class Pipeline:
    """A loaded checkpoint: its denoiser (EMA weights by default) and how it was trained."""

    def __init__(self, precond, record: RunConfig, path: Path, autoencoder=None, weights_file: str | None = None):
        self.precond, self.path = precond.eval().requires_grad_(False), path
        self.weights_file = weights_file  # model.safetensors or ema.safetensors of a kuosan checkpoint
        self.record = record if isinstance(record, RunConfig) else RunConfig.from_dict(record)  # its config.json
        self.autoencoder = autoencoder  # latent models: a kuosan.latent.LatentAutoencoder that decodes samples
        self._denoisers = {}  # (backend, threads, precision, weights' versions) -> runtime_denoiser's, reused

    @classmethod
    def load(cls, checkpoint_dir, device=None, use_ema: bool = True, autoencoder=None,
             adapters=()) -> "Pipeline":
        """A kuosan checkpoint or run directory, or a local diffusers model directory.
        ``autoencoder``: where a latent model's autoencoder is now, if it moved since training.
        ``adapters``: LoRA adapter files (or ``(path, weight)`` pairs) mixed onto the weights."""
        adapters = adapter_list(adapters)  # before any work: a NaN weight would turn every image black
        if looks_like_hub_name(checkpoint_dir):
            require_local_dir(checkpoint_dir, "checkpoint")  # refused: kuosan never downloads
        device = resolve_device(device or "auto")
        if is_diffusers_dir(checkpoint_dir):
            precond, record = diffusers_model(checkpoint_dir)
            pipe = cls(precond.to(device), record, Path(checkpoint_dir))
        else:
            ckpt = resolve_checkpoint(checkpoint_dir)
            saved = read_model_checkpoint(ckpt, weights="ema" if use_ema else "model")
            record = saved["record"]
            precond = model_from_checkpoint_config(record)
            try:
                precond.load_state_dict(saved["weights"])
            except RuntimeError as e:
                raise KuosanError(f"weights in {ckpt} do not fit the architecture in its config.json: "
                                  f"{str(e).splitlines()[0]}") from None
            ae = autoencoder_for_checkpoint(record, ckpt, override=autoencoder, device=device)
            name = "ema.safetensors" if use_ema and (ckpt / "ema.safetensors").is_file() else "model.safetensors"
            pipe = cls(precond.to(device), record, ckpt, ae, weights_file=name)
        if adapters:
            mix_adapters(pipe.precond, adapters)
        prepare_model(pipe.precond)  # kuosan UNets compute in channels_last; other networks untouched
        return pipe

    # -- facts about the model ------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.precond.parameters()).device

    @property
    def config(self) -> dict:
        """The checkpoint's config.json as JSON (:attr:`record` is the typed view)."""
        return self.record.to_dict()

    @property
    def num_classes(self) -> int:
        return self.record.network.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.record.data.class_names)

    @property
    def dataset(self) -> str:
        return self.record.data.spec or ""

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The shape the denoiser works on: pixels, or latents for a latent model."""
        return self.record.network.image_shape

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        """The shape of the images it makes (for a latent model, its autoencoder's input)."""
        return self.image_shape if self.autoencoder is None else self.autoencoder.image_shape

    def to_model_space(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 images [N, C, H, W] -> what the denoiser works on ([-1, 1] pixels or scaled latents)."""
        from kuosan.data import to_model_range

        x = to_model_range(images_uint8) if self.autoencoder is None else self.autoencoder.encode(images_uint8)
        return x.to(self.device)

    def to_images(self, x: torch.Tensor) -> np.ndarray:
        """The denoiser's output -> uint8 [N, H, W, C] (latents are decoded)."""
        from kuosan.images import to_uint8_nhwc

        return to_uint8_nhwc(x) if self.autoencoder is None else self.autoencoder.decode_nhwc(x)

    @property
    def sample_config(self) -> SampleConfig:
        """The model's default sampling settings: its config's ``sample`` section over kuosan's defaults."""
        return self.record.sample

    def labels_for(self, seeds: list[int], class_labels) -> list[int] | None:
        """One class per seed: all the same (an index or name), a list, or None (conditional models then
        cycle through the classes: seed k gets class k mod C). A model trained on finer labels than its data
        set's classes (``emoji:sub``, ``emoji:fine``) also takes those classes' names ("animals"): each seed
        then gets one of the class's finer labels (:func:`kuosan.data.emoji.labels_for_group`)."""
        if not self.num_classes:
            if class_labels is not None:
                raise KuosanError("this model is unconditional: it takes no class")
            return None
        if class_labels is None:
            return [k % self.num_classes for k in seeds]
        if isinstance(class_labels, (np.ndarray, torch.Tensor)) and class_labels.ndim == 0:
            class_labels = class_labels.item()  # a 0-d array or tensor holds one class for all seeds
        if isinstance(class_labels, (list, tuple, np.ndarray, torch.Tensor)):
            given = class_labels.tolist() if hasattr(class_labels, "tolist") else list(class_labels)
            if len(given) != len(seeds):
                raise KuosanError(f"{len(given)} class labels for {len(seeds)} seeds")
            out, names = [None] * len(seeds), {}   # each name worked out once, whatever the list's length
            for i, c in enumerate(given):
                if isinstance(c, str):
                    names.setdefault(c.strip().lower(), []).append(i)
                else:
                    out[i] = self.class_index(c)
            for name, where in names.items():
                group = self._group_labels(name, [seeds[i] for i in where])
                for j, i in enumerate(where):
                    out[i] = group[j] if group is not None else self._class_or_group(given[i])
            return out
        group = self._group_labels(class_labels, seeds)
        return group if group is not None else [self._class_or_group(class_labels)] * len(seeds)

    def _group_labels(self, name, seeds: list[int]) -> list[int] | None:
        """A model conditioned on finer labels than its data set's classes (``emoji:sub``, ``emoji:fine``) asked
        for one of those classes by name ("animals"): each seed's label inside it; None otherwise."""
        if not isinstance(name, str) or not self.num_classes:
            return None
        from kuosan.data.emoji import has_groups, labels_for_group

        if not has_groups(self.dataset):
            return None
        return labels_for_group(self.dataset, self.class_names, name, seeds)

    def _class_or_group(self, c) -> int:
        """:meth:`class_index`, whose error names the groups too where :meth:`labels_for` takes them."""
        try:
            return self.class_index(c)
        except KuosanError as e:
            from kuosan.data.emoji import CLASS_NAMES, has_groups

            if isinstance(c, str) and str(e).startswith("unknown class") and self.num_classes \
                    and has_groups(self.dataset):
                raise KuosanError(f"{e}, or one of the classes they fall in: {', '.join(CLASS_NAMES)}") from None
            raise

    def class_for(self, name_or_index, seed: int = 0) -> int:
        """One class label for the image of ``seed``: :meth:`class_index`, or, on a model trained on finer labels
        than its data set's classes (``emoji:sub``), one of those classes' names ("animals"), which gives the
        finer label :meth:`labels_for` gives that seed. For the doors that take one class (editing,
        interpolation between classes)."""
        group = self._group_labels(name_or_index, [int(seed)])
        return group[0] if group is not None else self._class_or_group(name_or_index)

    @property
    def groups(self) -> list[str]:
        """The class names :meth:`labels_for` takes besides the model's own classes: the data set's classes for
        a model trained on finer labels (``emoji:sub``: "animals", "objects"), else none."""
        if not self.num_classes or not isinstance(self.dataset, str):
            return []
        from kuosan.data.emoji import CLASS_NAMES, has_groups

        own = {n.lower() for n in self.class_names}
        return [n for n in CLASS_NAMES if n not in own] if has_groups(self.dataset) else []

    def class_index(self, name_or_index) -> int:
        """A class given by index or by (case-insensitive) name."""
        if self.num_classes == 0:
            raise KuosanError("this model is unconditional: it takes no class")
        if isinstance(name_or_index, (int, np.integer)) and not isinstance(name_or_index, bool):
            k = int(name_or_index)
        elif isinstance(name_or_index, str) and name_or_index.strip().isdigit():
            k = int(name_or_index)
        else:
            if not isinstance(name_or_index, str):
                raise KuosanError(f"a class is an index or a name, got {name_or_index!r}")
            names = [n.lower() for n in self.class_names]
            if str(name_or_index).lower() not in names:
                shown = self.class_names if len(names) <= 100 else [*self.class_names[:20], "..."]
                raise KuosanError(f"unknown class {name_or_index!r}; classes: {', '.join(shown)}") from None
            k = names.index(str(name_or_index).lower())
        if not 0 <= k < self.num_classes:
            raise KuosanError(f"class {k} out of range: this model has classes 0-{self.num_classes - 1}")
        return k

    # -- sampling -------------------------------------------------------------------------------
    def sample(self, seeds: Sequence[int] | str | int = 16, class_labels=None, *, sampler: str | None = None,
               steps: int | None = None, guidance: float | None = None, guidance_rescale: float | None = None,
               schedule: str | None = None, batch_size: int | None = DEFAULT_BATCH, sampler_options: dict | None = None, progress=None,
               distributed: bool = False, threshold=None, bf16: bool = False, backend: str | None = None,
               threads: int | None = None) -> SampleResult:
        """Generate one image per seed. ``seeds`` is a list, a range string ``"0-63"`` or a count;
        ``class_labels`` one class for all (index or name), a list, or None (conditional models then
        cycle through the classes: seed k gets class k mod C). ``guidance_rescale`` (0 to 1) pulls the guided
        prediction's spread back toward the conditional one's (Lin et al. 2024, eq. 15-16; diffusers'
        ``guidance_rescale``); None means the model's ``sample`` section. ``batch_size`` None means
        :data:`DEFAULT_BATCH`; ``sampler_options`` are the sampler's own keyword arguments (``{"eta": 0.5}``,
        checked by :func:`kuosan.validation.check_sampler_options`). With ``distributed`` every process of
        the torch.distributed group calls this: each samples its share of the seeds, all get every image.
        ``threshold``: "clip" or a quantile such as 0.995 keeps the denoised image in [-1, 1] (pixel
        models only; :mod:`kuosan.diffusion.thresholding`). ``bf16``: the network under bfloat16 autocast
        (:func:`kuosan.sampling.bf16_denoiser`). ``backend``: "torch" (eager, kuosan's kernels), or
        "onnxruntime" / "openvino" running the network exported to ONNX (:mod:`kuosan.interop.onnx`) with
        ``threads`` threads; the preconditioning and the sampler stay kuosan's. None means
        ``$KUOSAN_BACKEND``, else "auto": on the CPU in float32, network calls of at most
        :data:`~kuosan.interop.onnx.AUTO_MAX_BATCH` images on ONNX Runtime where it is installed (the
        network is exported once, on first use, and cached), larger ones on eager torch."""
        backend = default_backend() if backend is None else backend
        one_of(backend, "backend", BACKENDS)
        if threads is not None:
            whole(threads, "threads", 1, 1024)
        req = check_sample_request(seeds=seeds, sampler=sampler, steps=steps, schedule=schedule, guidance=guidance,
                                   guidance_rescale=guidance_rescale, batch=batch_size, threshold=threshold, bf16=bf16,
                                   progress=progress)
        cfg = dataclasses.replace(self.sample_config, **{k: req[k] for k in SAMPLE_FIELDS if req[k] is not None})
        seeds, threshold, bf16 = req["seeds"], req["threshold"], bool(req["bf16"])
        sampler_options = check_sampler_options(cfg.sampler, sampler_options)
        labels = self.labels_for(seeds, class_labels)
        if threshold is not None and self.autoencoder is not None:
            raise KuosanError("thresholding keeps pixels in [-1, 1]; this model samples latents, which have "
                              "another range: drop the threshold")
        sample_fn = generate_distributed if distributed else generate
        den = self._denoiser(backend, threads, "bfloat16" if bf16 else "float32")
        t0 = time.perf_counter()
        x = sample_fn(self.precond, sample=cfg, shape=self.image_shape, seeds=seeds, class_labels=labels,
                      null_label=self.num_classes or None, batch_size=req["batch"] or DEFAULT_BATCH,
                      sampler_options=sampler_options, denoiser=den, threshold=threshold, progress=progress,
                      bf16=bf16 and den is None)
        images = self.to_images(x)  # a latent model's samples are decoded here, inside the timing
        seconds = time.perf_counter() - t0
        return SampleResult(images=images, labels=None if labels is None else np.asarray(labels, np.int64),
                            seeds=seeds, nfe=nfe(cfg.sampler, cfg.steps), seconds=seconds,
                            params=self.generation_params(cfg, threshold))

    def _denoiser(self, backend: str, threads: int | None, precision: str):
        """The backend's denoiser (None: ``self.precond``), made once and reused while the weights are unchanged
        (a runtime's session and its weights' fingerprint are not remade every call; an in-place change of
        the weights, such as ``load_state_dict``, moves their version counters and makes a new one)."""
        versions = tuple(t._version for t in self.precond.state_dict().values())
        key = (backend, threads, precision, versions)
        if key not in self._denoisers:
            den = runtime_denoiser(self, backend, threads, precision=precision)
            self._denoisers = {key: None if den is self.precond else den}
        return self._denoisers[key]

    def generation_params(self, cfg: SampleConfig, threshold=None) -> dict:
        """What a PNG made by this model records of how it was made (:mod:`kuosan.pnginfo`)."""
        from kuosan import __version__

        out = {"mode": "generate", "model": str(self.path), "checksum": self.weights_sha256, "sampler": cfg.sampler,
               "steps": cfg.steps, "schedule": cfg.schedule, "guidance": cfg.guidance, "kuosan": __version__}
        if cfg.guidance_rescale:
            out["guidance_rescale"] = cfg.guidance_rescale
        return {**out, "threshold": threshold} if threshold is not None else out

    @property
    def weights_sha256(self) -> str | None:
        """SHA-256 of the weights file in use (as its state.json records it), None for other formats."""
        if self.weights_file is None:
            return None
        return recorded_sha256(self.path, self.weights_file)
