"""Transfer learning: pretrain on Fashion-MNIST, then adapt to the MNIST subset three ways at equal steps.

    .venv/bin/python benchmarks/transfer.py                                   # the default budget
    .venv/bin/python benchmarks/transfer.py --pretrain-steps 60 --steps 30 --n 100   # a smoke run
    .venv/bin/python benchmarks/transfer.py --pretrained runs/fm                 # start from a trained run

With ``--pretrained DIR`` (any kuosan run or checkpoint trained on Fashion-MNIST, e.g. ``kuosan train --config
demo --out runs/fm``) the pretraining is skipped and every arm is built like that model (its network and
parameterisation); otherwise a model of the ``fashion-mnist`` preset's parameterisation with the demo's widths is
pretrained here for ``--pretrain-steps``.

Arms, each trained for ``--steps`` optimiser steps on ``mnist`` (4,500 digits) with the same batches:
    scratch    a new network (lr, warm-up as a from-scratch run)
    finetune   every weight from the Fashion-MNIST model (kuosan.training.finetune.init_from; lr ÷ 10, warm-up 50)
    lora       the Fashion-MNIST model frozen, LoRA adapters on attention and residual convolutions trained, and
               the class embedding (MNIST's classes are new)
Reported per arm: Fréchet distance of samples to the MNIST test digits (features of the shipped mnist-cnn
classifier when its weights exist, else EfficientNet-Lite0; n/a without kuosan.evaluation), conditional
accuracy (mnist-cnn, n/a without it), trainable parameters, the size of what must be stored (full model vs
adapter file), training wall and CPU time. Writes benchmarks/results/transfer.json and prints a table.
The training steps are a plain loop (objective, AdamW, EMA as kuosan.training.loop), identical for the arms.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from kuosan.config import config_to_dict, load_config, resolve_config_path
from kuosan.data import load_dataset, to_model_range
from kuosan.diffusion.objectives import loss_for
from kuosan.errors import KuosanError
from kuosan.training.finetune import FINETUNE_LR_FACTOR, FINETUNE_WARMUP, init_from
from kuosan.model import build_model, network_spec
from kuosan.nets.lora import add_lora, mark_only_lora_trainable, save_adapter, weights_checksum
from kuosan.runtime import tune_allocator
from kuosan.config import SampleConfig
from kuosan.sampling import generate
from kuosan.checkpoint import save_checkpoint
from kuosan.training.ema import EMA
from kuosan.training.loop import batch_indices

RESULTS = Path(__file__).parent / "results"
CLASS_EMBEDDING = "class_emb.weight"


def fit(precond, data, *, steps, batch, lr, warmup, seed, label_dropout=0.1, ema_decay=0.999):
    """``steps`` AdamW steps of the model's default objective on ``data``; returns (EMA module, stats)."""
    params = [p for p in precond.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99))
    ema = EMA(precond, ema_decay)
    objective = loss_for(precond)
    gen = torch.Generator().manual_seed(seed + 1)
    images, labels, k = data.images, data.labels, data.num_classes
    losses = []
    t0, c0 = time.perf_counter(), time.process_time()
    precond.train()
    for step in range(steps):
        idx = batch_indices(step, batch, len(data), seed)
        x0, y = to_model_range(images[idx]), labels[idx].clone()
        y[torch.rand(len(idx), generator=gen) < label_dropout] = k  # the null class, for guidance
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / max(1, warmup))
        loss = objective(precond, x0, y, generator=gen).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(precond, step)
        losses.append(loss.item())
    tail = losses[-max(1, len(losses) // 10):]
    return ema.module.eval(), {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
                               "final_loss": sum(tail) / len(tail),
                               "trainable_parameters": sum(p.numel() for p in params)}


class Evaluator:
    """Fréchet distance and conditional accuracy against MNIST test digits, each n/a when unavailable."""

    def __init__(self, n_ref: int):
        self.notes, self.extractor, self.classifier = [], None, None
        try:
            from kuosan.evaluation.features import get_extractor
            from kuosan.evaluation.metrics import frechet_distance_features

            self.fd = frechet_distance_features
        except ImportError as e:
            self.notes.append(f"Fréchet distance n/a: kuosan.evaluation unavailable ({e})")
            return
        for name in ("mnist-cnn", "efficientnet-lite0"):
            try:
                self.extractor = get_extractor(name)
                break
            except (KuosanError, ImportError, OSError) as e:
                self.notes.append(f"extractor {name} unavailable: {str(e).splitlines()[0]}")
        if self.extractor is not None and self.extractor.num_classes:
            self.classifier = self.extractor
        elif self.extractor is not None:
            try:
                self.classifier = get_extractor("mnist-cnn")
            except (KuosanError, ImportError, OSError):
                self.notes.append("conditional accuracy n/a: no mnist-cnn classifier weights "
                                  "(python scripts/train_classifiers.py makes them)")
        if self.extractor is not None:
            ref = load_dataset("mnist", "test", max_images=n_ref)
            self.ref_features = self.extractor(ref.images)

    def floor(self, n: int) -> dict:
        """The same metrics for ``n`` real training digits: what a perfect model would score."""
        real = load_dataset("mnist", "train", max_images=n)
        return {"images": len(real), **self(real.images, real.labels),
                "note": f"{len(real)} MNIST training digits (the classifier's own training images: accuracy 1.0; "
                        "98.2% on test)"}

    def __call__(self, images_uint8_nchw, labels) -> dict:
        out = {"frechet_distance": None, "feature_extractor": None, "conditional_accuracy": None}
        if self.extractor is not None:
            out["frechet_distance"] = self.fd(self.extractor(images_uint8_nchw), self.ref_features)
            out["feature_extractor"] = self.extractor.name
        if self.classifier is not None:
            probs = self.classifier.predict(images_uint8_nchw)
            out["conditional_accuracy"] = float((probs.argmax(1) == labels.numpy()).mean())
        return out


def sample_uint8(model, n, steps):
    labels = torch.arange(n) % 10
    x = generate(model, SampleConfig("heun", steps), shape=(1, 28, 28), seeds=range(n), class_labels=labels.tolist(),
                 null_label=10, batch_size=100)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8), labels


def stored_bytes(model, arm, tmp: Path, base_sha=None, targets="attn,conv") -> int:
    """Bytes of what an arm must store to be used: the full weights, or the adapter file (+ its JSON)."""
    if arm == "lora":
        extras = {n: q for n, q in model.named_parameters() if n.endswith(CLASS_EMBEDDING)}
        path = save_adapter(model, tmp / f"{arm}-adapter", base_sha256=base_sha, targets=targets,
                            extra_tensors=extras)
        return path.stat().st_size + path.with_suffix(".json").stat().st_size
    from safetensors.torch import save_file

    path = tmp / f"{arm}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrained", default=None, help="a kuosan run/checkpoint on Fashion-MNIST (skips pretraining)")
    ap.add_argument("--pretrain-steps", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=500, help="adaptation steps, the same for every arm")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3, help="from-scratch learning rate (fine-tune: ÷ 10)")
    ap.add_argument("--lora-lr", type=float, default=1e-3)
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--lora-targets", default="attn,conv", help="LoRA layers: attn, conv, or globs on layer names")
    ap.add_argument("--arms", nargs="+", default=["scratch", "finetune", "lora"],
                    choices=["scratch", "finetune", "lora"])
    ap.add_argument("--base-channels", type=int, default=32)
    ap.add_argument("--n", type=int, default=500, help="samples per arm for the metrics")
    ap.add_argument("--sample-steps", type=int, default=12, help="Heun steps when sampling")
    ap.add_argument("--max-train-images", type=int, default=None, help="cap Fashion-MNIST (default all 60,000)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    ap.add_argument("--out", default=str(RESULTS / "transfer.json"))
    ap.add_argument("--note", default="", help="written into the results (e.g. 'smoke run, tiny budget')")
    args = ap.parse_args()
    tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)

    overrides = {"model.base_channels": args.base_channels, "model.channel_mults": "1,2,2", "model.num_blocks": 1,
                 "model.attn_resolutions": "7", "model.dropout": 0.0}
    cfg = load_config(None, overrides, base=resolve_config_path("fashion-mnist"))
    spec, diffusion = network_spec(cfg, channels=1, resolution=28, num_classes=10), cfg.diffusion
    if args.pretrained:
        from kuosan.training.finetune import read_parent

        parent_config = read_parent(args.pretrained)["config"]
        if parent_config.get("data", {}).get("spec", "").split(":")[0] != "fashion-mnist":
            raise SystemExit(f"--pretrained {args.pretrained}: trained on {parent_config.get('data')}, "
                             "not fashion-mnist")
        spec, diffusion = parent_config["network"], parent_config["diffusion"]
    fashion = None if args.pretrained else load_dataset("fashion-mnist", "train", max_images=args.max_train_images)
    mnist = load_dataset("mnist", "train")
    evaluate = Evaluator(n_ref=500)
    results = {"benchmark": "transfer", "machine": {"platform": platform.platform(), "torch": torch.__version__,
                                                    "threads": torch.get_num_threads()},
               "settings": vars(args), "notes": list(evaluate.notes)}

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        # --- pretrain on Fashion-MNIST and save it as a kuosan checkpoint (or take the one given) -------
        if args.pretrained:
            parent = args.pretrained
            model = build_model(spec, diffusion)
            info = init_from(model, parent, num_classes=10)
            results["pretrain"] = {"data": "fashion-mnist", "checkpoint": str(parent), "steps": info["step"],
                                   "parameters": sum(p.numel() for p in model.parameters()),
                                   "precond": diffusion["precond"]}
            print(f"pretrained model: {info['path']} (step {info['step']}, {diffusion['precond']})")
        else:
            torch.manual_seed(0)
            model = build_model(spec, diffusion)
            ema, stats = fit(model, fashion, steps=args.pretrain_steps, batch=args.batch, lr=args.lr,
                             warmup=min(200, args.pretrain_steps // 5), seed=0)
            config = {"format": "kuosan-checkpoint", "version": 1, "network": spec, **config_to_dict(cfg),
                      "data": {"spec": "fashion-mnist", "class_names": fashion.class_names, "resolution": 28,
                               "channels": 1, "num_classes": 10}}
            parent = save_checkpoint(tmp / "pretrained", args.pretrain_steps, config=config,
                                     model=model.state_dict(), ema=ema.state_dict())
            results["pretrain"] = {"data": fashion.name, "images": len(fashion), "steps": args.pretrain_steps,
                                   **stats, "parameters": sum(p.numel() for p in model.parameters())}
            print(f"pretrained {args.pretrain_steps} steps in {stats['seconds']:.0f} s "
                  f"(loss {stats['final_loss']:.4f})")

        # --- three ways to MNIST, same steps and batches -------------------------------------------
        arms = {}
        for arm in args.arms:
            torch.manual_seed(1)
            model = build_model(spec, diffusion)
            lr, warmup, base_sha = args.lr, min(200, args.steps // 5), None
            if arm != "scratch":
                info = init_from(model, parent, num_classes=10)
                lr, warmup = args.lr * FINETUNE_LR_FACTOR, min(FINETUNE_WARMUP, args.steps // 5)
            if arm == "lora":
                base_sha = info["weights_sha256"]
                assert base_sha == weights_checksum(model)
                add_lora(model, args.lora_rank, targets=args.lora_targets)
                # MNIST's classes are not Fashion-MNIST's: the class embedding trains too, as in kuosan train
                mark_only_lora_trainable(model, also=[f"*{CLASS_EMBEDDING}"])
                lr = args.lora_lr
            ema, stats = fit(model, mnist, steps=args.steps, batch=args.batch, lr=lr, warmup=warmup, seed=1)
            t0 = time.perf_counter()
            images, labels = sample_uint8(ema, args.n, args.sample_steps)
            metrics = evaluate(images, labels)
            arms[arm] = {**stats, "lr": lr, "warmup": warmup, **metrics,
                         "stored_bytes": stored_bytes(ema, arm, tmp, base_sha, args.lora_targets),
                         "eval_seconds": time.perf_counter() - t0}
            print(f"{arm}: {stats['seconds']:.0f} s, loss {stats['final_loss']:.4f}, FD {metrics['frechet_distance']}")
        results["arms"] = arms
    results["floor"] = evaluate.floor(args.n)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
    print(f"\n{'arm':<9} {'FD':>9} {'cond.acc':>8} {'trainable':>10} {'stored':>9} {'train s':>8} {'cpu s':>7} "
          f"{'loss':>7}")
    for arm, r in arms.items():
        print(f"{arm:<9} {fmt(r['frechet_distance'], '9.2f')} {fmt(r['conditional_accuracy'], '8.3f')} "
              f"{r['trainable_parameters']:>10,} {r['stored_bytes'] / 1e6:>7.2f}MB {r['seconds']:>8.1f} "
              f"{r['cpu_seconds']:>7.1f} {r['final_loss']:>7.4f}")
    floor = results["floor"]
    print(f"{'real':<9} {fmt(floor['frechet_distance'], '9.2f')} {fmt(floor['conditional_accuracy'], '8.3f')}"
          f"   ({floor['images']} training digits against the same test digits: the floor)")
    for note in results["notes"]:
        print(f"note: {note}")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
