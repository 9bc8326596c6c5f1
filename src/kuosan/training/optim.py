"""AdamW with the whole update in one parallel pass over all float32 CPU parameters.

``FusedAdamW`` is ``torch.optim.AdamW`` (same hyper-parameters, same state: ``step``, ``exp_avg``,
``exp_avg_sq``, so checkpoints move freely between the two) whose ``step`` calls the kernel in
``kuosan/nets/kernels/adamw.cpp`` when every parameter with a gradient is a dense float32 CPU tensor laid out
like its gradient and moments, and torch's own implementation otherwise (other devices and dtypes,
``amsgrad``, ``maximize``, sparse or oddly strided gradients). Made by :func:`kuosan.perf.adamw`.
"""

from __future__ import annotations

import math

import torch

from kuosan.nets import kernels

__all__ = ["FusedAdamW"]


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
        return loss
