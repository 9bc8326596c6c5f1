"""Train the small CNN classifiers shipped with kuosan's evaluation (seeded, CPU is enough).

    nice python scripts/train_classifiers.py                       # every data set
    nice python scripts/train_classifiers.py --datasets mnist --epochs 20
    nice python scripts/train_classifiers.py --datasets emoji      # needs the emoji sources installed

For each data set it writes ``src/kuosan/evaluation/weights/<name>.safetensors`` and ``<name>.json``
(architecture, data set, test accuracy on the full test split and on its first 2,000 images, seed, date).
Fashion-MNIST reaches 92.6% in 10 epochs (random shifts and horizontal flips, AdamW, one-cycle).
The emoji classifier sees the 64x64 colour images at 32x32 (``classifier.prepare`` resizes them the same way
at evaluation time); its test split holds emoji it never saw in training, in every style.
"""

import argparse
import datetime
import json
import math
import os
import resource
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kuosan.evaluation.classifier import CLASSIFIERS, WEIGHTS_DIR, SmallCNN, architecture_of, prepare

# Per data set: epochs, whether horizontal flips preserve the class (not for digits), learning rate; for
# colour sets also the channels, the side the network sees, and the background the shifts pad with (-1 black,
# +1 white, in the [-1, 1] range).
RECIPES = {
    "fashion-mnist": dict(epochs=10, flip=True, lr=3e-3),
    "mnist": dict(epochs=15, flip=False, lr=3e-3),
    "emoji": dict(epochs=15, flip=True, lr=3e-3, channels=3, resolution=32, background=1.0),
}
CHECK_SUBSET = 2000  # the shipped-weights test re-measures accuracy on the first 2,000 test images


def load_split(dataset, split):
    """(images uint8 [N, 1, 28, 28], labels int64 [N]) through kuosan's data loader."""
    try:
        from kuosan.data import load_dataset
    except ImportError:  # kuosan.data's front door not there yet: read the built-in files directly
        from kuosan.data.builtin import READERS

        images, labels, _ = READERS[dataset](split)
        return images, labels
    ds = load_dataset(f"{dataset}:{split}")
    return ds.images, ds.labels


def augment(x, generator, flip, shift=2, background=-1.0):
    """Random translations by up to ``shift`` pixels (padded with ``background``) and optional flips."""
    n, _, h, w = x.shape
    padded = F.pad(x, (shift,) * 4, value=background)
    dy, dx = torch.randint(0, 2 * shift + 1, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, x.shape[1], h, w + 2 * shift)
    x = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, x.shape[1], h, w)
    x = x.gather(3, cols)
    if flip:
        mirror = torch.rand(n, generator=generator) < 0.5
        x = torch.where(mirror[:, None, None, None], x.flip(3), x)
    return x


@torch.inference_mode()
def accuracy(model, images, labels, batch=1000):
    """Top-1 accuracy on uint8 images, prepared as the evaluation prepares them (``classifier.prepare``)."""
    model.eval()
    correct = 0
    for i in range(0, len(images), batch):
        logits = model(prepare(images[i:i + batch], model.convs[0].in_channels, model.resolution))
        correct += int((logits.argmax(1) == labels[i:i + batch]).sum())
    return correct / max(len(images), 1)


def train_one(dataset, epochs, flip, lr, seed, batch_size=128, channels=1, resolution=None, background=-1.0):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x_train, y_train = load_split(dataset, "train")
    x_test, y_test = load_split(dataset, "test")
    resolution = resolution or x_train.shape[-1]
    model = SmallCNN(in_channels=channels, num_classes=int(y_train.max()) + 1, resolution=resolution)
    x_prepared = prepare(x_train, channels, resolution)  # once: the resize is the same every epoch
    steps = epochs * math.ceil(len(x_train) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        t0, total = time.time(), 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            x = augment(x_prepared[idx], generator, flip, background=background)
            loss = F.cross_entropy(model(x), y_train[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach().item() * len(idx)
        acc = accuracy(model, x_test, y_test)
        print(f"{dataset} epoch {epoch + 1}/{epochs}: loss {total / len(order):.4f}  "
              f"test acc {acc:.4f}  ({time.time() - t0:.0f} s)", flush=True)
    model.eval()
    return model, {
        "image_side": int(x_train.shape[-1]),
        "test_accuracy": accuracy(model, x_test, y_test),
        "test_images": len(x_test),
        "check_subset": {"images": f"first {CHECK_SUBSET} of the test split",
                         "accuracy": accuracy(model, x_test[:CHECK_SUBSET], y_test[:CHECK_SUBSET])},
        "train_images": len(x_train),
    }


def _channels_text(model):
    return "one channel" if model.convs[0].in_channels == 1 else f"{model.convs[0].in_channels} channels (RGB)"


def _cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def save(model, name, dataset, results, recipe, seed, out_dir):
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / f"{name}.safetensors"))
    os.chmod(out_dir / f"{name}.safetensors", 0o644)  # safetensors writes 0600; the package ships it readable
    side, seconds, cpu_seconds = results.pop("image_side"), results.pop("seconds"), results.pop("cpu_seconds")
    meta = {
        "name": name,
        "dataset": dataset,
        "architecture": architecture_of(model),
        "input": f"uint8 / 127.5 - 1, {_channels_text(model)}, {model.resolution}x{model.resolution}"
                 + ("" if model.resolution == side else f" (resized from {side}x{side}, bilinear with antialiasing)"),
        **results,
        "training": {**recipe, "seed": seed, "optimizer": "AdamW, one-cycle", "label_smoothing": 0.1,
                     "augmentation": "random shifts of up to 2 px" + (", horizontal flips" if recipe["flip"] else ""),
                     "seconds": seconds, "cpu_seconds": cpu_seconds},
        "parameters": sum(p.numel() for p in model.parameters()),
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
    }
    (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(CLASSIFIERS.values()), choices=list(RECIPES))
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = {dataset: name for name, dataset in CLASSIFIERS.items()}
    for dataset in args.datasets:
        recipe = dict(RECIPES[dataset], **({"epochs": args.epochs} if args.epochs else {}))
        t0, c0 = time.time(), _cpu_seconds()
        model, results = train_one(dataset, seed=args.seed, **recipe)
        results.update(seconds=round(time.time() - t0, 1), cpu_seconds=round(_cpu_seconds() - c0, 1))
        meta = save(model, names[dataset], dataset, results, recipe, args.seed, args.out)
        print(f"{meta['name']}: test accuracy {meta['test_accuracy']:.4f} on {meta['test_images']} images, "
              f"{meta['parameters']} parameters -> {args.out}")


if __name__ == "__main__":
    main()
