"""What ``kuosan bench`` reports: the machine it ran on, a summary row per contender (times, GFLOP/s,
fractions of the convolution ceiling, ratios to diffusers) and the printed table."""

from __future__ import annotations

import os
import platform

import torch

from kuosan.nets import kernels

__all__ = ["environment", "summarise", "print_table"]

_ENV_VARS = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY", "KUOSAN_KERNEL_ARCH",
             "KUOSAN_CONV_KERNELS", "KUOSAN_WINOGRAD_TILE")

_COLUMNS = [("params M", "params_m", "{:.2f}"), ("GFLOP/fwd", "gflop_forward", "{:.1f}"),
            ("fwd s", "forward_s", "{:.3f}"), ("fwd GF/s", "forward_gflop_per_s", "{:.0f}"),
            ("fwd %ceil", "forward_fraction_of_conv_ceiling", "{:.0%}"),
            ("train img/s", "train_images_per_s", "{:.1f}"), ("train GF/s", "train_gflop_per_s", "{:.0f}"),
            ("train %ceil", "train_fraction_of_conv_ceiling", "{:.0%}"),
            ("sample img/s ({steps} st)", "sample_images_per_s", "{:.2f}"),
            ("fwd x", "forward_speedup_vs_diffusers", "{:.2f}"),
            ("train x", "train_images_speedup_vs_diffusers", "{:.2f}"),
            ("sample x", "sample_images_speedup_vs_diffusers", "{:.2f}"),
            ("train x same", "train_images_speedup_vs_diffusers_same_precision", "{:.2f}"),
            ("sample x same", "sample_images_speedup_vs_diffusers_same_precision", "{:.2f}")]

_LEGEND = ("(x: ratio to diffusers in float32, higher is faster; x same: to diffusers in the row's precision, "
           "diffusers-bf16 for bfloat16 rows; %ceil: of the convolution ceiling in the row's precision; "
           "medians of alternated rounds; GFLOP/s count the direct convolution's FLOPs, and kuosan's 3x3 "
           "layers compute them with Winograd's algorithm in 2.25-4x fewer multiply-adds)")


def environment(tuned: bool) -> dict:
    return {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"), "allocator_tuned": tuned,
            "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), "fused_kernels": kernels.status(),
            **{k: os.environ[k] for k in _ENV_VARS if k in os.environ}}


def _row(c, result: dict, args, ceiling: float, precision: str) -> dict:
    f = result["forward"][c.name]["median_s"]
    row = {"precision": precision, "params_m": c.params / 1e6, "gflop_forward": c.flops_forward / 1e9,
           "forward_s": f,
           "forward_gflop_per_s": c.flops_forward / f / 1e9,
           "forward_fraction_of_conv_ceiling": c.flops_forward / f / 1e9 / ceiling}
    if "train_step" in result:
        s = result["train_step"][c.name]["median_s"]
        row |= {"train_step_s": s, "train_images_per_s": args.batch / s,
                "train_gflop_per_s": c.flops_train / s / 1e9,
                "train_fraction_of_conv_ceiling": c.flops_train / s / 1e9 / ceiling}
    if "sample" in result:
        row["sample_images_per_s"] = args.batch / result["sample"][c.name]["median_s"]
    return row


def _add_ratios(rows: dict) -> None:
    """Ratios to diffusers in float32 (``*_vs_diffusers``) and in the row's precision (``*_same_precision``:
    bfloat16 rows against ``diffusers-bf16`` when it ran)."""
    refs = {"": rows.get("diffusers")}
    for row in rows.values():
        refs["_same_precision"] = rows.get("diffusers-bf16" if row["precision"] == "bfloat16" else "diffusers")
        for suffix, ref in refs.items():
            if ref is None:
                continue
            row[f"forward_speedup_vs_diffusers{suffix}"] = ref["forward_s"] / row["forward_s"]
            for k in ("train_images_per_s", "sample_images_per_s"):
                if k in row:
                    row[k.replace("_per_s", "") + f"_speedup_vs_diffusers{suffix}"] = row[k] / ref[k]


def summarise(result: dict, contenders: list, args) -> dict:
    """Per contender: times, GFLOP/s, the fraction of the convolution ceiling in its own precision, and
    ratios to diffusers."""
    fw = result["forward"]
    ceilings = {"float32": max(fw[k]["gflop_per_s"] for k in ("conv3x3_nchw", "conv3x3_channels_last")),
                "bfloat16": fw["conv3x3_channels_last_bf16"]["gflop_per_s"]}
    rows = {}
    for c in contenders:
        precision = "bfloat16" if c.info.get("bf16_autocast") or args.bf16 else "float32"
        rows[c.name] = _row(c, result, args, ceilings[precision], precision)
    _add_ratios(rows)
    return {"conv_ceiling_gflop_per_s": ceilings["float32"], "conv_ceiling_bf16_gflop_per_s": ceilings["bfloat16"],
            "rows": rows}


def print_table(summary: dict, result: dict, args, log) -> None:
    fw = result["forward"]
    log(f"\nceiling: conv3x3 64->64 {fw['conv3x3_nchw']['gflop_per_s']:.0f} GFLOP/s (NCHW), "
        f"{fw['conv3x3_channels_last']['gflop_per_s']:.0f} (channels_last), "
        f"{fw['conv3x3_channels_last_bf16']['gflop_per_s']:.0f} (channels_last, bfloat16); "
        f"matmul 2048 {fw['matmul_2048']['gflop_per_s']:.0f}")
    rows = summary["rows"]
    cols = [(h.format(steps=args.sample_steps), k, fmt) for h, k, fmt in _COLUMNS
            if any(k in r for r in rows.values())]
    width = max(len(n) for n in rows) + 2
    log("".ljust(width) + "  ".join(h for h, _, _ in cols))
    for name, r in rows.items():
        log(name.ljust(width) + "  ".join(fmt.format(r[k]).rjust(len(h)) if k in r else "-".rjust(len(h))
                                          for h, k, fmt in cols))
    if "diffusers" in rows:
        log(_LEGEND)
    for k, v in result.get("layers", {}).items():
        log(f"  {k:42s} {v['median_s'] * 1e3:8.2f} ms")
