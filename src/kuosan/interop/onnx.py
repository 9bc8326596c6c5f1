"""A denoiser's network as ONNX, run on ONNX Runtime or OpenVINO with kuosan's preconditioning around it.

    export_onnx(pipe.precond, "onnx/", image_shape=pipe.image_shape, num_classes=pipe.num_classes)
    den = OnnxDenoiser("onnx/", backend="openvino", threads=2)          # D(x, sigma, class_labels)
    images = generate(pipe.precond, cfg, shape=..., seeds=..., denoiser=den)
    den = runtime_denoiser(pipe, "onnxruntime", threads=2)             # the same, exported once and cached

Only the network F(x, c_noise, class_labels) leaves torch: it is the cost. The preconditioning around it,
EDM (Karras et al. 2022), eq. 7,

    D(x; σ) = c_skip(σ) · x + c_out(σ) · F(c_in(σ) · x; c_noise(σ)),

stays the preconditioner's own float32 torch code (:class:`OnnxDenoiser` is the model's ``Precond`` with its
network swapped for the runtime), so a runtime-backed denoiser samples the same images as eager torch up to
the runtimes' rounding (measured in benchmarks/results/runtimes.json).

An export directory holds ``network.onnx`` (opset 18, batch dimension dynamic), for a latent model
``decoder.onnx`` (scaled latents -> images in [-1, 1]), and ``kuosan-onnx.json``: the preconditioning
(its kind and σ parameters, enough to rebuild it with :func:`kuosan.diffusion.precond.build_precond`),
the shapes and the inputs. Weights are stored inside the ONNX files (protobuf; loading runs no code).
Exporting needs ``pip install onnx onnxscript`` (torch's exporter, offline); running needs ``pip install
onnxruntime`` or ``pip install openvino``. They are imported inside the functions that use them.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import os
import shutil
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kuosan.diffusion.precond import PRECONDS, build_precond
from kuosan.diffusion.schedules import DiscreteVP
from kuosan.errors import KuosanError, cache_root

__all__ = ["FORMAT", "BACKENDS", "OPSET", "export_onnx", "export_network", "precond_record", "precond_from_record",
           "read_export", "open_runtime", "RuntimeNet", "OnnxDenoiser", "BatchDispatch", "runtime_denoiser",
           "onnx_cache_dir", "default_backend", "AUTO_MAX_BATCH"]

FORMAT = "kuosan-onnx"
VERSION = 1
META, NETWORK, DECODER = "kuosan-onnx.json", "network.onnx", "decoder.onnx"
BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
# "auto" on the CPU: a network call of at most this many images runs on ONNX Runtime, larger ones on eager
# torch with kuosan's kernels. The demo network, 2 threads (benchmarks/runtimes.py, two machines): ONNX Runtime
# 2.1-2.3x faster than eager at batch 1, 1.65-1.7x at 2, 1.0-1.3x at 4, even at 8, 0.76-0.89x at 64.
AUTO_MAX_BATCH = 4
PRECISIONS = ("float32", "bfloat16")
OPSET = 18  # the opset of torch's exporter library (torchlib); newer ones are converted up from it
_PROBE_SIGMAS = (0.002, 0.05, 0.5, 2.0, 80.0)
_INSTALL = {"onnxruntime": "pip install onnxruntime", "openvino": "pip install openvino",
            "onnxscript": "pip install onnx onnxscript", "onnx": "pip install onnx onnxscript"}


def _require(module: str, what: str):
    """``import module``, or a one-line KuosanError naming the pip command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise KuosanError(f"{what} needs the optional package {module}: {_INSTALL[module]}") from None


# --- the preconditioning as JSON ------------------------------------------------------------------

def precond_record(precond) -> dict:
    """What rebuilds ``precond``'s preconditioning: its kind, σ parameters and discrete schedule, with
    ``"rebuildable"`` false where :func:`build_precond` would not reproduce its scalings (a diffusers
    scheduler's ᾱ table, say: use :func:`runtime_denoiser` with the loaded model then)."""
    schedule = getattr(precond, "schedule", None)
    record = {"kind": precond.kind, "sigma_data": float(precond.sigma_data),
              "sigma_min": float(precond.sigma_min), "sigma_max": float(precond.sigma_max)}
    if isinstance(schedule, DiscreteVP):
        record.update(beta_schedule=schedule.beta_schedule, timesteps=int(schedule.timesteps))
    record["rebuildable"] = precond.kind in PRECONDS and _same_scalings(precond, record)
    return record


def _same_scalings(precond, record: dict) -> bool:
    try:
        rebuilt = precond_from_record(dict(record, rebuildable=True), nn.Identity())
    except KuosanError:
        return False
    sigma = torch.tensor(_PROBE_SIGMAS, dtype=torch.float32).clamp(precond.sigma_min, precond.sigma_max)
    ours = [*precond.scalings(sigma), precond.noise_cond(sigma)]
    theirs = [*rebuilt.scalings(sigma), rebuilt.noise_cond(sigma)]
    return all(torch.equal(torch.as_tensor(a), torch.as_tensor(b)) for a, b in zip(ours, theirs))


def precond_from_record(record: dict, net: nn.Module):
    """The preconditioner of :func:`precond_record` around ``net``."""
    if not record.get("rebuildable", False):
        raise KuosanError(f"this export's {record.get('kind')!r} preconditioning cannot be rebuilt from its JSON "
                          "(a schedule kuosan does not build itself); run it with runtime_denoiser(kuosan.load(...))")
    return build_precond(record["kind"], net, sigma_data=record["sigma_data"], sigma_min=record["sigma_min"],
                         sigma_max=record["sigma_max"], beta_schedule=record.get("beta_schedule", "linear"),
                         timesteps=record.get("timesteps", 1000))


# --- export ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_exporter():
    """torch's exporter prints its progress and warns of optional operators and deprecations; keep a
    command's output clean (a failure still raises)."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _export(module: nn.Module, args: tuple, path: Path, names: list[str]) -> None:
    """``module(*args)`` as ONNX at ``path``: dimension 0 of every tensor argument is one dynamic batch."""
    _require("onnxscript", "exporting to ONNX")
    _require("onnx", "exporting to ONNX")
    batch = torch.export.Dim("batch", min=1)
    dynamic = tuple(None if a is None else {0: batch} for a in args)
    was = module.training
    try:
        with _quiet_exporter():
            torch.onnx.export(module.eval(), args, str(path), dynamo=True, opset_version=OPSET, external_data=False,
                              input_names=names, output_names=["out"], dynamic_shapes=dynamic, verbose=False)
    except KuosanError:
        raise
    except Exception as e:  # noqa: BLE001 - the exporter's many error types, as one line
        raise KuosanError(f"torch could not export this network to ONNX: {str(e).splitlines()[0][:300]}") from None
    finally:
        module.train(was)


def export_network(net: nn.Module, path, *, image_shape, num_classes: int) -> list[str]:
    """The network F(x, c_noise, class_labels) as ONNX at ``path``; returns the input names the graph
    kept (no ``class_labels`` for an unconditional network)."""
    p = next(net.parameters())
    x = torch.randn(2, *image_shape, device=p.device)  # batch 2: torch.export specialises a batch of 1
    c_noise = torch.zeros(2, device=p.device)
    labels = torch.zeros(2, dtype=torch.long, device=p.device) if num_classes else None
    names = ["x", "c_noise"] + (["class_labels"] if num_classes else [])
    _export(net, (x, c_noise, labels), Path(path), names)
    onnx = _require("onnx", "exporting to ONNX")
    kept = {i.name for i in onnx.load(str(path), load_external_data=False).graph.input}
    return [n for n in names if n in kept]  # the exporter drops an input the network never reads


class _ScaledDecoder(nn.Module):
    """A latent model's decoder as one function of the diffusion model's (scaled) latents: x = Dec(z / s)."""

    def __init__(self, autoencoder):
        super().__init__()
        self.net, self.scale = autoencoder.net, float(autoencoder.scale)

    def forward(self, z):
        return self.net.decode(z / self.scale).float()


def export_onnx(precond, out_dir, *, image_shape, num_classes: int, autoencoder=None, source: str = "") -> dict:
    """Write ``network.onnx``, a latent model's ``decoder.onnx`` and ``kuosan-onnx.json`` to ``out_dir``
    (created); returns the JSON written. ``autoencoder``: a :class:`kuosan.latent.LatentAutoencoder`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inputs = export_network(precond.net, out / NETWORK, image_shape=tuple(image_shape), num_classes=num_classes)
    meta = {"format": FORMAT, "version": VERSION, "opset": OPSET, "torch": torch.__version__, "source": str(source),
            "network": {"file": NETWORK, "inputs": inputs, "output": "out", "batch": "dynamic"},
            "precond": precond_record(precond), "image_shape": list(image_shape), "num_classes": int(num_classes),
            "decoder": None}
    if autoencoder is not None:
        latent = tuple(autoencoder.latent_shape)
        z = torch.randn(2, *latent, device=autoencoder.device)
        _export(_ScaledDecoder(autoencoder), (z,), out / DECODER, ["z"])
        meta["decoder"] = {"file": DECODER, "latent_shape": list(latent), "scale": float(autoencoder.scale),
                           "image_shape": list(autoencoder.image_shape)}
    (out / META).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def read_export(onnx_dir) -> dict:
    """An export directory's ``kuosan-onnx.json``, checked."""
    path = Path(onnx_dir) / META
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise KuosanError(f"{onnx_dir} is not a kuosan ONNX export (reading {path}: {e}); write one with "
                          "`kuosan export --onnx DIR --checkpoint RUN`") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise KuosanError(f"{path} is not a kuosan ONNX export of format version {VERSION}")
    return meta


# --- runtimes -------------------------------------------------------------------------------------

def open_runtime(path, backend: str, threads: int | None = None, precision: str = "float32"):
    """``run(feeds: {name: ndarray}) -> ndarray``, the first output of the ONNX model at ``path`` on
    ``backend`` ("onnxruntime" or "openvino", CPU) with ``threads`` intra-op threads (default: torch's)."""
    if precision not in PRECISIONS:
        raise KuosanError(f"unknown precision {precision!r}; use {' or '.join(PRECISIONS)}")
    threads = int(threads or torch.get_num_threads())
    if backend == "onnxruntime":
        return _onnxruntime(Path(path), threads, precision)
    if backend == "openvino":
        return _openvino(Path(path), threads, precision)
    raise KuosanError(f"unknown ONNX backend {backend!r}; use onnxruntime or openvino")


def _onnxruntime(path: Path, threads: int, precision: str):
    ort = _require("onnxruntime", "--backend onnxruntime")
    if precision != "float32":  # its CPU provider has no bfloat16 convolution kernels
        raise KuosanError("ONNX Runtime's CPU provider runs float32 only; for bfloat16 use --backend openvino or torch")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    # Idle threads sleep, as kuosan sets for OpenMP (OMP_WAIT_POLICY=PASSIVE): spinning starves a shared machine.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)[0]


def _openvino(path: Path, threads: int, precision: str):
    ov = _require("openvino", "--backend openvino")
    # INFERENCE_PRECISION_HINT: OpenVINO itself picks bfloat16 on CPUs that have it, so float32 is asked for.
    config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
              "ENABLE_CPU_PINNING": False, "INFERENCE_PRECISION_HINT": "bf16" if precision == "bfloat16" else "f32"}
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()

    def run(feeds):
        request.infer(feeds)
        return request.get_output_tensor(0).data.copy()
    return run


class RuntimeNet(nn.Module):
    """An exported network F(x, c_noise, class_labels) on an ONNX runtime, called like the torch one:
    torch tensors in (any layout), a float32 CPU tensor out. A conditional network called without labels
    gets the null class ``num_classes``, as kuosan's class embedding does."""

    def __init__(self, run, inputs: list[str], num_classes: int):
        super().__init__()
        self.run, self.inputs, self.num_classes = run, list(inputs), int(num_classes)
        # No weights live here; this empty one tells callers that ask a model's parameters for its device
        # (``generate``) that it runs on the CPU.
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, x, c_noise, class_labels=None):
        feeds = {"x": _numpy(x, np.float32)}
        if "c_noise" in self.inputs:
            feeds["c_noise"] = _numpy(c_noise, np.float32)
        if "class_labels" in self.inputs:
            if class_labels is None:
                class_labels = torch.full((x.shape[0],), self.num_classes)
            feeds["class_labels"] = _numpy(class_labels, np.int64)
        return torch.from_numpy(np.asarray(self.run(feeds), dtype=np.float32)).to(x.device)


def _numpy(t: torch.Tensor, dtype) -> np.ndarray:
    """A C-contiguous array of ``dtype`` (an NCHW copy of a channels_last tensor)."""
    return np.ascontiguousarray(t.detach().to("cpu", torch.float32 if dtype == np.float32 else torch.int64).numpy())


class OnnxDenoiser(nn.Module):
    """D(x, σ, class_labels) with the network of the export ``onnx_dir`` on ``backend`` and the
    preconditioning in torch: ``precond``'s own (a loaded model's: exactly its arithmetic), or, without
    it, the one rebuilt from the export's JSON. For ``generate(..., denoiser=OnnxDenoiser(...))``."""

    def __init__(self, onnx_dir, backend: str = "onnxruntime", threads: int | None = None, precond=None,
                 precision: str = "float32", run=None):
        super().__init__()
        meta = read_export(onnx_dir)
        path = Path(onnx_dir) / meta["network"]["file"]
        run = run or open_runtime(path, backend, threads, precision)  # ``run``: another runtime's callable
        self.net = RuntimeNet(run, meta["network"]["inputs"], meta["num_classes"])
        if precond is None:
            self.precond = precond_from_record(meta["precond"], self.net)
        else:  # a copy of the preconditioner whose network is the runtime's (the torch weights are not copied)
            self.precond = copy.deepcopy(precond, {id(precond.net): self.net})
        self.backend, self.meta = backend, meta

    def forward(self, x, sigma, class_labels=None):
        return self.precond(x, sigma, class_labels)


# --- for Pipeline.sample(backend=) and `kuosan sample --backend` ------------------------------------

def onnx_cache_dir() -> Path:
    """``$KUOSAN_CACHE/onnx``, else ``~/.cache/kuosan/onnx``."""
    return cache_root("onnx")


def _fingerprint(pipe) -> str:
    """The export's name: the network's tensors, the preconditioning, the shapes, torch's version."""
    h = hashlib.sha256(json.dumps([FORMAT, VERSION, torch.__version__, precond_record(pipe.precond),
                                   list(pipe.image_shape), pipe.num_classes]).encode())
    for name, t in pipe.precond.net.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


def _cached_export(pipe, cache: Path) -> Path:
    """The export of ``pipe``'s network under ``cache``, written first if it is not there (atomically)."""
    final = cache / _fingerprint(pipe)
    if (final / META).is_file():
        return final
    print(f"kuosan: exporting the network to ONNX, once for these weights (about 15 s on 2 cores) -> {final}",
          file=sys.stderr, flush=True)
    tmp = cache / f".tmp-{final.name}-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        export_onnx(pipe.precond, tmp, image_shape=pipe.image_shape, num_classes=pipe.num_classes,
                    source=str(pipe.path))
        os.replace(tmp, final)
    except OSError:
        if not (final / META).is_file():  # not another process that got there first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def default_backend() -> str:
    """``$KUOSAN_BACKEND`` if set (one of :data:`BACKENDS`), else "auto"."""
    chosen = os.environ.get("KUOSAN_BACKEND", "").strip().lower() or "auto"
    if chosen not in BACKENDS:
        raise KuosanError(f"KUOSAN_BACKEND={chosen}: use one of {', '.join(BACKENDS)} (or leave it unset)")
    return chosen


def _importable(*modules: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in modules)


class BatchDispatch(nn.Module):
    """The "auto" backend: D(x, σ, class_labels) on ``open_runtime()``'s denoiser (ONNX Runtime) for calls
    of at most ``max_batch`` images, where its lower fixed cost a call wins, and on ``eager`` (torch,
    kuosan's kernels) for larger ones. The choice depends on the call's batch alone, so one request
    samples the same images every time. ``open_runtime`` runs on the first small call (for a pipeline:
    the export, once per set of weights, cached); :meth:`prepare` runs it ahead, e.g. in a server's
    background thread. Where it fails, every call is eager, after one line on standard error."""

    def __init__(self, eager: nn.Module, open_runtime, max_batch: int = AUTO_MAX_BATCH):
        super().__init__()
        self.eager, self.max_batch, self._open = eager, int(max_batch), open_runtime
        self._runtime, self._lock = None, threading.Lock()

    def prepare(self) -> nn.Module:
        """The denoiser small calls run on, opened on the first call."""
        with self._lock:
            if self._runtime is None:
                try:
                    self._runtime = self._open()
                except (KuosanError, OSError) as e:  # auto is a choice of speed, not of results
                    why = str(e).splitlines()[0] if str(e) else type(e).__name__
                    print(f"kuosan: sampling on eager torch: {why}", file=sys.stderr, flush=True)
                    self._runtime = self.eager
            return self._runtime

    def forward(self, x, sigma, class_labels=None):
        if x.shape[0] <= self.max_batch:
            return (self._runtime or self.prepare())(x, sigma, class_labels)
        return self.eager(x, sigma, class_labels)


def runtime_denoiser(pipe, backend: str, threads: int | None = None, precision: str = "float32", cache_dir=None):
    """The denoiser ``pipe`` samples with on ``backend``: "torch" is ``pipe.precond`` itself (eager, kuosan's
    kernels); "onnxruntime" and "openvino" run its network exported to ONNX (once per set of weights, cached
    in :func:`onnx_cache_dir`) with the model's own preconditioning (:class:`OnnxDenoiser`). "auto" is
    :class:`BatchDispatch` on a CPU model in float32 where ONNX Runtime (and torch's exporter: ``onnx``,
    ``onnxscript``) are installed, else ``pipe.precond``."""
    if backend not in BACKENDS:
        raise KuosanError(f"unknown backend {backend!r}; use {', '.join(BACKENDS)}")
    if backend == "auto":
        if pipe.device.type != "cpu" or precision != "float32" or not _importable("onnxruntime", "onnx", "onnxscript"):
            return pipe.precond
        cache = Path(cache_dir) if cache_dir else onnx_cache_dir()
        return BatchDispatch(pipe.precond, lambda: OnnxDenoiser(_cached_export(pipe, cache), "onnxruntime", threads,
                                                                precond=pipe.precond))
    if backend == "torch":
        return pipe.precond
    if pipe.device.type != "cpu":
        raise KuosanError(f"--backend {backend} runs on the CPU; load the model with --device cpu")
    _require("onnxruntime" if backend == "onnxruntime" else "openvino", f"--backend {backend}")
    onnx_dir = _cached_export(pipe, Path(cache_dir) if cache_dir else onnx_cache_dir())
    return OnnxDenoiser(onnx_dir, backend, threads, precond=pipe.precond, precision=precision)
