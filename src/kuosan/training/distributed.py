"""Several processes, one run: data parallelism on ``torch.distributed``, launched by ``torchrun``.

A launch sets RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/PORT or a rendezvous); without them
everything here is the identity and a run is the plain single-process one. Backends are chosen from
the device: NCCL on CUDA (process ``LOCAL_RANK`` takes ``cuda:LOCAL_RANK``), gloo on CPU.

How a step is split (EDM's convention: ``train.batch`` is the *global* batch):

    global batch  = batch_indices(step, batch, n, seed)      the same images as one process takes
    rank r's rows = [r·B/W, (r+1)·B/W)                        a contiguous shard (sizes differ by ≤ 1)
    micro-batches = the shard cut into ⌈shard / batch_per_device⌉ pieces (gradient accumulation)

Noise and label dropout are drawn exactly as in one process: every rank draws the *whole* global
batch's σ and noise from the shared noise generator (cheap next to the network for small images) and
the network runs only on the rank's rows (``_RowSlice``); for gradient accumulation the generator is
rewound so each micro-batch sees the same draws. Each rank back-propagates (W/B)·Σ its per-sample
losses and DDP averages over W, so the gradient is ∇ of the global-batch mean, as in one process, up
to the order of float sums. Model dropout (the global torch RNG) is the one source that is not shared:
rank 0 keeps the single-process stream, rank r > 0 reseeds it every step from (seed, rank, step), so a
run is deterministic and resumes exactly at the same number of processes.

Only rank 0 reads and writes checkpoints, logs and pictures; what it reads is broadcast, so the
machines need no shared file system. Weights are saved unwrapped (no ``module.`` prefix), so a run
can resume on another number of processes.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn

from kuosan.errors import KuosanError
from kuosan.runtime import shard_slice

__all__ = ["Dist", "init_distributed", "setup_backends", "shard_slice", "micro_slices", "accumulation_steps",
           "ShardedStep", "generate_distributed"]

_STOP_CODES = {None: 0, "time limit": 1, "SIGTERM": 2}  # the highest code of any rank wins


@dataclass(frozen=True)
class Dist:
    """This process's place in the run; ``world == 1`` is a plain single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def from_main(self, fn):
        """``fn()`` run on rank 0 and its result (or its KuosanError) sent to every rank."""
        if not self.enabled:
            return fn()
        box = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except KuosanError as e:
                box[0] = ("error", str(e))
        dist.broadcast_object_list(box, src=0)
        if box[0][0] == "error":
            raise KuosanError(box[0][1])
        return box[0][1]

    def agree_stop(self, reason: str | None) -> str | None:
        """Every rank stops at the same step: the strongest reason any rank has (SIGTERM > time limit)."""
        if not self.enabled:
            return reason
        code = torch.tensor(_STOP_CODES[reason], device=self.device)
        dist.all_reduce(code, op=dist.ReduceOp.MAX)  # a CPU-GPU sync point, once a step
        return {v: k for k, v in _STOP_CODES.items()}[int(code)]

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            x = x.clone()
            dist.all_reduce(x)
        return x

    def describe(self, batch: int, batch_per_device: int | None) -> str:
        """The start-up line's note on how a step is split ('' for a plain single process)."""
        notes = [f"{self.world} processes ({dist.get_backend()}), ≤ {math.ceil(batch / self.world)} of the "
                 f"{batch} images each"] if self.enabled else []
        acc = accumulation_steps(batch, self.world, batch_per_device)
        if acc > 1:
            notes.append(f"{acc} forward/backward passes a step (batch_per_device {batch_per_device})")
        return "".join(f" | {n}" for n in notes)


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise KuosanError(f"environment variable {name}={os.environ[name]!r} is not a whole number") from None


def _process_device(device: torch.device, local_rank: int) -> torch.device:
    """Process ``local_rank``'s device: ``cuda`` becomes ``cuda:LOCAL_RANK``; CPU stays CPU."""
    if device.type != "cuda":
        return device
    local_world = _env_int("LOCAL_WORLD_SIZE", 1)
    if device.index is not None and local_world > 1:
        raise KuosanError(f"--device {device} under torchrun with {local_world} processes a machine: each process "
                          "takes cuda:LOCAL_RANK; pass --device cuda (or auto)")
    index = local_rank if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise KuosanError(f"process with LOCAL_RANK {local_rank} needs cuda:{index}, but this machine has "
                          f"{torch.cuda.device_count()} GPUs; use --nproc_per_node={torch.cuda.device_count()}")
    return torch.device("cuda", index)


def init_distributed(device: torch.device) -> Dist:
    """Join the process group that torchrun's environment describes (once per process), or return a
    single-process ``Dist`` when there is none. ``device`` is the resolved ``--device``."""
    if dist.is_available() and dist.is_initialized():  # joined before (a second call in this process)
        local_rank = _env_int("LOCAL_RANK", 0)
        return Dist(dist.get_rank(), dist.get_world_size(), local_rank, _process_device(device, local_rank))
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1 or "RANK" not in os.environ:
        return Dist(device=device)
    if not dist.is_available():
        raise KuosanError("this PyTorch build has no torch.distributed; run a single process")
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    device = _process_device(device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    atexit.register(_destroy)
    return Dist(rank, world, local_rank, device)


def _destroy() -> None:
    """At exit: wait for every rank (one that finished early, like a non-zero rank of ``kuosan evaluate``,
    must not tear its transport down while others still talk to it: gloo then aborts the process at
    interpreter shutdown, now and then), then leave the group."""
    if dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def setup_backends(device: torch.device, tf32: bool = True) -> None:
    """CUDA speed settings: TensorFloat-32 matmuls and convolutions (10-bit mantissa inputs, fp32
    accumulation: fine for diffusion training, and Ampere or newer only), and cuDNN autotuning (the
    shapes are fixed; it makes convolutions run-to-run non-deterministic). Nothing changes on CPU."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    precision = "tf32" if tf32 else "ieee"
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # PyTorch ≥ 2.9
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision
    else:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


# --- who takes which rows ------------------------------------------------------------------------

def micro_slices(batch: int, rank: int, world: int, per_device: int | None) -> list[slice]:
    """Rank ``rank``'s rows cut into pieces of at most ``per_device`` (all of them when None)."""
    rows = shard_slice(batch, rank, world)
    n = rows.stop - rows.start
    pieces = 1 if per_device is None else max(1, math.ceil(n / per_device))
    return [slice(rows.start + k * n // pieces, rows.start + (k + 1) * n // pieces) for k in range(pieces)]


def accumulation_steps(batch: int, world: int, per_device: int | None) -> int:
    """Forward/backward passes a process makes per optimiser step: ⌈B / (W · per_device)⌉."""
    return 1 if per_device is None else max(1, math.ceil(batch / (world * per_device)))


# --- one optimiser step's forward and backward passes ------------------------------------------

class _RowSlice(nn.Module):
    """Runs ``inner`` on rows ``rows`` of a global batch only; the other rows of the output are zeros
    without a gradient (the caller keeps only its rows' losses)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.rows = inner, None

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, class_labels: torch.Tensor | None = None):
        r = self.rows
        if r is None:
            return self.inner(x, c_noise, class_labels)
        out = self.inner(x[r], c_noise[r] if c_noise.ndim else c_noise,
                         None if class_labels is None else class_labels[r])              # (b, C, H, W)
        before = out.new_zeros((r.start, *out.shape[1:]))
        after = out.new_zeros((x.shape[0] - r.stop, *out.shape[1:]))
        return torch.cat([before, out, after])                                           # (B, C, H, W)


def _with_net(precond: nn.Module, net: nn.Module) -> nn.Module:
    """A shallow copy of ``precond`` that calls ``net`` instead of its own network. It shares every
    parameter and setting; ``precond`` itself (what is saved, averaged and sampled) is unchanged."""
    view = copy.copy(precond)
    object.__setattr__(view, "_modules", {**precond._modules, "net": net})
    return view


class ShardedStep:
    """The forward and backward passes of one optimiser step, for this process's rows.

    ``step(...)`` leaves the gradient of the global-batch mean loss in the parameters (DDP averages it
    over processes) and returns that mean loss, the same number on every rank. One process with one
    micro-batch and no compilation runs exactly the code of a plain loop.
    """

    def __init__(self, precond: nn.Module, ctx: Dist, *, batch: int, batch_per_device: int | None = None,
                 compile: bool = False, seed: int = 0):
        if ctx.enabled and batch < ctx.world:
            raise KuosanError(f"train.batch {batch} is smaller than the {ctx.world} processes; each process needs "
                              "at least one image a step")
        outside = set(map(id, precond.parameters())) - set(map(id, precond.net.parameters()))
        if outside:
            raise KuosanError("the preconditioner has parameters outside its network; data parallelism "
                              "synchronises the network's gradients only")
        self.ctx, self.batch, self.seed = ctx, batch, seed
        self.slices = micro_slices(batch, ctx.rank, ctx.world, batch_per_device)
        net, self.ddp = precond.net, None
        if ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # A 1x1 convolution's weight gradient may differ from DDP's bucket in the strides of its
            # size-1 dimensions only (the same memory layout); DDP warns about it, harmlessly.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            net = self.ddp = DDP(net, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        if compile:
            # The network only; DDP first, so the compiled graphs split at its gradient buckets. Shapes
            # are static (at most two micro-batch sizes): dynamic ones fail in Inductor on our UNet (2.13).
            net = torch.compile(net, dynamic=False)
        self.plain = not ctx.enabled and len(self.slices) == 1
        self.rows = None if self.plain else _RowSlice(net)
        self.model = precond if self.plain and not compile else _with_net(precond, self.rows or net)

    def step(self, objective, x0: torch.Tensor, labels, generator: torch.Generator, obj_kw: dict, autocast,
             opt: torch.optim.Optimizer, step: int) -> torch.Tensor:
        if self.plain:
            with autocast:
                loss = objective(self.model, x0, labels, generator=generator, **obj_kw).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            return loss
        if self.ctx.rank > 0:  # model dropout: a stream per rank and step (rank 0 keeps the saved one)
            torch.manual_seed((self.seed * 1_000_003 + self.ctx.rank) * 1_000_003 + step)
        start = generator.get_state()
        opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=x0.device)
        for k, rows in enumerate(self.slices):
            if k:
                generator.set_state(start)  # the same σ and noise for the whole global batch again
            self.rows.rows = rows
            last = k == len(self.slices) - 1
            with self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext():
                with autocast:
                    per_sample = objective(self.model, x0, labels, generator=generator, **obj_kw)[rows]
                (per_sample.sum() * (self.ctx.world / self.batch)).backward()
            total += per_sample.detach().float().sum()
        self.rows.rows = None
        return self.ctx.all_sum(total) / self.batch
