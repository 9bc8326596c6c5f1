"""AdamW with the whole update in one parallel pass over all float32 CPU parameters.

``FusedAdamW`` is ``torch.optim.AdamW`` (same hyper-parameters, same state: ``step``, ``exp_avg``,
``exp_avg_sq``, so checkpoints move freely between the two) whose ``step`` calls the kernel in
``kuosan/nets/kernels/adamw.cpp`` when every parameter with a gradient is a dense float32 CPU tensor laid out
like its gradient and moments, and torch's own implementation otherwise (other devices and dtypes,
``amsgrad``, ``maximize``, sparse or oddly strided gradients). Made by :func:`adamw`.
"""

from __future__ import annotations

import math

import torch

from kuosan.nets import kernels

__all__ = ["FusedAdamW", "adamw", "match_state_layout"]


def _dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)


class FusedAdamW(torch.optim.AdamW):
    def _kernel_can_take(self, group) -> bool:
        if group["amsgrad"] or group["maximize"] or group.get("capturable") or group.get("differentiable"):
            return False
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            if (p.device.type != "cpu" or p.dtype != torch.float32 or g.is_sparse or g.dtype != torch.float32
                    or g.stride() != p.stride() or not _dense(p)):
                return False
            state = self.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state and (state[key].stride() != p.stride() or state[key].dtype != torch.float32):
                    return False
        return True

    def _uniform_steps(self, group) -> bool:
        """One bias correction serves the group: every parameter with a gradient has taken as many steps
        (one that joined later, after a step without a gradient, would need its own)."""
        counts = {float(self.state[p]["step"]) if self.state.get(p) else 0.0
                  for p in group["params"] if p.grad is not None}
        return len(counts) <= 1

    @torch.no_grad()
    def step(self, closure=None):
        if not kernels.loaded() or not all(self._kernel_can_take(g) and self._uniform_steps(g)
                                           for g in self.param_groups):
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, avgs, sqs, steps = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                avgs.append(state["exp_avg"])
                sqs.append(state["exp_avg_sq"])
                steps.append(state["step"])
            if not params:
                continue
            for s in steps:
                s += 1
            t = float(steps[0])
            beta1, beta2 = group["betas"]
            lr = float(group["lr"])
            kernels.adamw_step(params, grads, avgs, sqs, lr=lr, beta1=beta1, beta2=beta2, eps=group["eps"],
                               weight_decay=group["weight_decay"], bias_correction1=1 - beta1 ** t,
                               bias_correction2_sqrt=math.sqrt(1 - beta2 ** t))
            # The kernel writes through raw pointers: tell torch the tensors changed, as an in-place op would
            # (autograd's checks of saved tensors, and caches keyed on versions, read these counters).
            for tensor in (*params, *avgs, *sqs):
                torch.autograd.graph.increment_version(tensor)
        return loss


def adamw(params, **kwargs):
    """AdamW (Loshchilov & Hutter 2019, Algorithm 2) as fast as this machine allows, same maths and state as
    ``torch.optim.AdamW``: on CPU :class:`FusedAdamW` (one parallel pass over all
    parameters: 2.7 ms a step for a 1.7 M-parameter UNet on 2 cores, where torch's fused kernel takes 12 and
    its for-loop 19; benchmarks/profile_step.py), elsewhere torch's fused kernel where it runs (CUDA), else its
    for-loop. After ``load_state_dict`` call :func:`match_state_layout` (moments read back from a file are
    NCHW beside ``channels_last`` weights)."""
    def as_list(ps):
        return [ps] if isinstance(ps, torch.Tensor) else list(ps)

    # Read generators once, here: torch reads them again when it builds the groups.
    groups = [dict(g, params=as_list(g["params"])) if isinstance(g, dict) else g for g in as_list(params)]
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    if tensors and all(p.device.type == "cpu" for p in tensors):
        return FusedAdamW(groups, **kwargs)
    if tensors and all(p.device.type == "cuda" and p.is_floating_point() for p in tensors):
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):  # an older torch without the fused kernel
            pass
    return torch.optim.AdamW(groups, **kwargs)


def match_state_layout(opt) -> None:
    """Give every optimiser state tensor its parameter's memory layout (in place; values unchanged).

    Checkpoints store tensors in the default layout; a UNet's weights are ``channels_last``. The for-loop
    AdamW does not mind; torch's fused one does (torch 2.13: moments are then applied to the wrong elements)
    and kuosan's takes torch's slower path, so the trainers call this after loading an optimiser state."""
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state.get(p, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
