"""``kuosan sample``: generate images from a checkpoint (one image per seed, PNGs, a grid, an .npz)."""

from __future__ import annotations

import argparse
import sys

from kuosan.cli.lora import parse_adapter
from kuosan.cli.options import add_device, add_sample_options

EXAMPLES = """examples:
  kuosan sample --checkpoint runs/fm --n 64 --sampler heun --steps 18 --class 3 --guidance 2.0 --seeds 0-63 --out samples/
  kuosan sample --checkpoint runs/fm --class Sneaker --n 16 --sampler dpmpp_2m --steps 10 --out sneakers/
  kuosan sample --checkpoint runs/demo-emoji/ldm --class animals --n 16 --guidance 7.5 --guidance-rescale 0.7 --out animals/
  kuosan sample --checkpoint runs/fm --adapter runs/mnist-lora/adapter.safetensors:0.8 --out samples/
  kuosan sample --checkpoint path/to/diffusers-unet-dir --sampler unipc --steps 10 --out samples/
  torchrun --nproc_per_node=2 -m kuosan sample --checkpoint runs/fm --seeds 0-999 --out samples/
(under torchrun give --seeds, not --n: torchrun reads --n as an abbreviation of its own --nnodes)
"""


def register(sub) -> None:
    p = sub.add_parser("sample", help="generate images from a checkpoint", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a run directory (its latest checkpoint) or a checkpoint")
    p.add_argument("--n", type=int, default=None, help="number of images (seeds 0..n-1 unless --seeds; default 64)")
    p.add_argument("--seeds", default=None, help="seeds, e.g. 0-63 or 1,5,9 (one image per seed)")
    p.add_argument("--class", dest="class_label", default=None, help="class index or name (default: cycle); a model trained on emoji:sub also takes "
                                        "the 9 class names, each seed drawn from that class's subcategories")
    add_sample_options(p)
    p.add_argument("--threshold", default=None, metavar="clip|P",
                   help="keep the denoised image in [-1, 1]: clip, or dynamic thresholding at quantile P (0.995)")
    p.add_argument("--batch", type=int, default=64, help="images a network call (default 64)")
    p.add_argument("--bf16", action="store_true",
                   help="run the network under bfloat16 autocast (faster on CPUs with AVX512-BF16 and on GPUs)")
    p.add_argument("--backend", default=None, choices=("auto", "torch", "onnxruntime", "openvino"),
                   help="auto (default, or $KUOSAN_BACKEND): on the CPU, network calls of at most 4 images on ONNX "
                        "Runtime where it is installed (2x faster there at batch 1), larger ones on eager torch; "
                        "torch: eager, kuosan's CPU kernels; onnxruntime / openvino: the network exported to ONNX "
                        "(pip install 'kuosan[onnx]' / 'kuosan[openvino]'; CPU only; exported once per set of "
                        "weights and cached)")
    p.add_argument("--threads", type=int, default=None, help="threads of the ONNX runtime (default: its own choice)")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--adapter", action="append", default=[], metavar="PATH[:WEIGHT]",
                   help="a LoRA adapter to apply, with an optional mixing weight (repeatable)")
    p.add_argument("--out", default="samples", help="output directory (default ./samples)")
    p.add_argument("--autoencoder", default=None, help="latent models: their autoencoder, if it moved since training")
    add_device(p)
    p.set_defaults(run=run)


def run(args) -> int:
    import kuosan
    from kuosan.runtime import resolve_device
    from kuosan.training.distributed import init_distributed
    from kuosan.validation import adapter_list, check_sample_request, output_dir, whole

    request = check_sample_request(n=args.n, seeds=args.seeds, sampler=args.sampler, steps=args.steps,
                                   schedule=args.schedule, guidance=args.guidance,
                                   guidance_rescale=args.guidance_rescale, batch=args.batch,
                                   threshold=args.threshold, prefix="--")
    output_dir(args.out)  # a file or a checkpoint there fails now, not after the sampling
    if args.threads is not None:
        whole(args.threads, "--threads", 1, 4096)
    adapters = adapter_list([parse_adapter(a) for a in args.adapter], "--adapter")
    # the ONNX runtimes are CPU ones ("auto" keeps torch on a GPU)
    from kuosan.interop.onnx import default_backend

    args.backend = args.backend or default_backend()
    device = "cpu" if args.backend in ("onnxruntime", "openvino") and args.device == "auto" else args.device
    ctx = init_distributed(resolve_device(device))  # under torchrun: each process a share of the seeds
    pipe = kuosan.load(args.checkpoint, device=str(ctx.device), use_ema=not args.raw,
                       autoencoder=args.autoencoder, adapters=adapters)
    from tqdm import tqdm

    seeds = request["seeds"]
    shown = ctx.is_main and sys.stderr.isatty()
    with tqdm(total=len(seeds), desc="sample", unit="img", disable=not shown) as bar:
        res = pipe.sample(seeds, args.class_label, sampler=request["sampler"], steps=args.steps, guidance=args.guidance,
                          guidance_rescale=args.guidance_rescale, schedule=args.schedule, batch_size=args.batch,
                          progress=bar.update, distributed=ctx.enabled, threshold=args.threshold, bf16=args.bf16, backend=args.backend,
                          threads=args.threads)
    if not ctx.is_main:
        return 0  # rank 0 writes the files
    saved = res.save(args.out, grid_cols=8 if len(seeds) >= 8 else None)
    print(f"{len(seeds)} images in {res.seconds:.1f} s ({len(seeds) / res.seconds:.2f} images/s, "
          f"{res.nfe} network evaluations each) -> {saved['dir']} (grid.png, samples.npz)")
    return 0
