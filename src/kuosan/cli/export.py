"""``kuosan export``: a checkpoint's network in another runtime's format (ONNX, :mod:`kuosan.interop.onnx`)."""

from __future__ import annotations

import argparse

from kuosan.cli.lora import parse_adapter

EXAMPLES = """examples:
  kuosan export --onnx onnx/fm --checkpoint runs/fm
  kuosan export --onnx onnx/fm --checkpoint runs/fm --verify onnxruntime
  kuosan export --onnx onnx/ldm --checkpoint runs/ldm-fm          a latent model: decoder.onnx too
  kuosan export --onnx onnx/fm-08 --checkpoint runs/fm --posthoc-ema 0.08     EDM2's post-hoc EMA, σ_rel 0.08
then sample with the exported network:
  kuosan sample --checkpoint runs/fm --backend openvino --out samples/
or in Python: kuosan.interop.onnx.OnnxDenoiser("onnx/fm", backend="onnxruntime") is a denoiser D(x, sigma, labels).

Writes network.onnx (the network F(x, c_noise, class_labels), batch dynamic, opset 18), decoder.onnx for a
latent model, and kuosan-onnx.json (the preconditioning and shapes). Needs: pip install onnx onnxscript
"""


def register(sub) -> None:
    p = sub.add_parser("export", help="write a checkpoint's network as ONNX (for ONNX Runtime, OpenVINO)",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", required=True, metavar="DIR", help="the directory to write the ONNX export to")
    p.add_argument("--checkpoint", required=True, help="a run directory (its latest checkpoint) or a checkpoint")
    p.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA")
    p.add_argument("--adapter", action="append", default=[], metavar="PATH[:WEIGHT]",
                   help="a LoRA adapter to mix into the weights first (repeatable)")
    p.add_argument("--autoencoder", default=None, help="latent models: their autoencoder, if it moved since training")
    p.add_argument("--posthoc-ema", type=float, default=None, metavar="SIGMA_REL",
                   help="export the EMA of this relative length instead, reconstructed from the run's post-hoc EMA "
                        "snapshots (EDM2; --checkpoint is then the run directory)")
    p.add_argument("--verify", default=None, choices=["onnxruntime", "openvino"],
                   help="run the export on this runtime and print its largest difference from torch's denoiser")
    p.set_defaults(run=run)


def run(args) -> int:
    import kuosan
    from kuosan.errors import KuosanError
    from kuosan.interop.onnx import export_onnx
    from kuosan.validation import adapter_list, output_dir

    out = output_dir(args.onnx, "--onnx")
    adapters = adapter_list([parse_adapter(a) for a in args.adapter], "--adapter")
    if args.posthoc_ema is not None and (adapters or args.raw):
        raise KuosanError("--posthoc-ema reconstructs the EMA weights; it goes with neither --adapter nor --raw")
    pipe = kuosan.load(args.checkpoint, device="cpu", use_ema=not args.raw, autoencoder=args.autoencoder,
                       adapters=adapters)
    if args.posthoc_ema is not None:
        from kuosan.training.posthoc_ema import reconstruct

        pipe.precond.load_state_dict(reconstruct(args.checkpoint, args.posthoc_ema))
    meta = export_onnx(pipe.precond, out, image_shape=pipe.image_shape, num_classes=pipe.num_classes,
                       autoencoder=pipe.autoencoder, source=str(pipe.path))
    files = [meta["network"]["file"]] + ([meta["decoder"]["file"]] if meta["decoder"] else [])
    print(f"{', '.join(files)} and kuosan-onnx.json ({meta['precond']['kind']} preconditioning, "
          f"{'x'.join(map(str, pipe.image_shape))}, batch dynamic) -> {out}")
    if args.verify:
        print(f"{args.verify}: largest |D_onnx - D_torch| = {_difference(pipe, out, args.verify):.3g} "
              "over 8 inputs at σ from σ_min to σ_max")
    return 0


def _difference(pipe, onnx_dir, backend: str) -> float:
    """max |D(x; σ)| difference between the export on ``backend`` and the loaded torch denoiser."""
    import torch

    from kuosan.interop.onnx import OnnxDenoiser

    den = OnnxDenoiser(onnx_dir, backend, precond=pipe.precond)
    g = torch.Generator().manual_seed(0)
    sigma = torch.logspace(torch.log10(torch.tensor(pipe.precond.sigma_min)),
                           torch.log10(torch.tensor(pipe.precond.sigma_max)), 8)
    x = torch.randn(8, *pipe.image_shape, generator=g) * sigma.view(-1, 1, 1, 1)
    labels = torch.arange(8) % pipe.num_classes if pipe.num_classes else None
    with torch.inference_mode():
        return float((den(x, sigma, labels) - pipe.precond(x, sigma, labels)).abs().max())
