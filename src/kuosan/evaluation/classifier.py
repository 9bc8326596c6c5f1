"""Small CNN classifiers for the bundled data sets, shipped in ``evaluation/weights/``.

Each classifier gives class predictions (diversity metrics, conditional accuracy) and, from its
penultimate layer, a feature extractor tuned to its data set ("fmnist-cnn", "mnist-cnn", "emoji-cnn": the
9 classes of the 64x64 colour emoji set, seen at 32x32).
``scripts/train_classifiers.py`` trains them (seeded) and writes ``<name>.safetensors`` with
``<name>.json`` (architecture, data set, test accuracy, date).
"""

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_DIR = Path(__file__).parent / "weights"

# Extractor name -> data set spec it was trained on (the data set part of a reference spec).
CLASSIFIERS = {"fmnist-cnn": "fashion-mnist", "mnist-cnn": "mnist", "emoji-cnn": "emoji"}


def classifier_for_dataset(dataset_name):
    """The shipped classifier's extractor name for a bundled data set, or ``None``."""
    for name, dataset in CLASSIFIERS.items():
        if dataset == dataset_name:
            return name
    return None


class SmallCNN(nn.Module):
    """(conv3×3-BN-ReLU)×2, pool, (conv-BN-ReLU)×2, pool, conv-BN-ReLU, global mean -> features -> logits."""

    def __init__(self, in_channels=1, num_classes=10, widths=(32, 64, 128), resolution=28, dropout=0.2):
        super().__init__()
        w1, w2, w3 = widths
        channels = [in_channels, w1, w1, w2, w2, w3]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1, bias=False) for a, b in zip(channels, channels[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in channels[1:])
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(w3, num_classes)
        self.resolution = resolution
        self.dim = w3

    def features(self, x):
        """``x``: ``[B, C, R, R]`` in [-1, 1] -> ``[B, widths[-1]]`` penultimate features."""
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = F.relu(norm(conv(x)))
            if i in (1, 3):
                x = F.max_pool2d(x, 2)
        return x.mean(dim=(2, 3))

    def forward(self, x):
        return self.head(self.dropout(self.features(x)))


def architecture_of(model):
    """The constructor arguments, as stored in the JSON beside the weights."""
    return {
        "class": "SmallCNN",
        "in_channels": model.convs[0].in_channels,
        "num_classes": model.head.out_features,
        "widths": [model.convs[0].out_channels, model.convs[2].out_channels, model.convs[4].out_channels],
        "resolution": model.resolution,
        "dropout": model.dropout.p,
    }


def load_classifier(name, weights_dir=None):
    """Load a shipped classifier by extractor name; returns ``(model in eval mode, metadata dict)``."""
    from safetensors.torch import load_file

    from kuosan.errors import KuosanError

    weights_dir = Path(weights_dir or WEIGHTS_DIR)
    meta_path, weights_path = weights_dir / f"{name}.json", weights_dir / f"{name}.safetensors"
    if not meta_path.is_file() or not weights_path.is_file():
        raise KuosanError(
            f"classifier {name!r} has no weights in {weights_dir}: run `python scripts/train_classifiers.py` "
            f"(known classifiers: {', '.join(CLASSIFIERS)})"
        )
    meta = json.loads(meta_path.read_text())
    arch = {k: v for k, v in meta["architecture"].items() if k != "class"}
    model = SmallCNN(**arch)
    model.load_state_dict(load_file(str(weights_path)), strict=True)
    return model.eval(), meta


@torch.inference_mode()
def predict(model, images_uint8, batch_size=512):
    """Class probabilities ``[N, K]`` (float64 numpy) for uint8 images ``[N, C, H, W]``."""
    out = []
    for start in range(0, len(images_uint8), batch_size):
        x = prepare(images_uint8[start:start + batch_size], model.convs[0].in_channels, model.resolution)
        out.append(model(x).softmax(-1).double().cpu())
    return torch.cat(out).numpy() if out else torch.zeros(0, model.head.out_features).double().numpy()


def prepare(images_uint8, channels, resolution, device="cpu"):
    """uint8 ``[N, C, H, W]`` -> float in [-1, 1] with the classifier's channels and resolution."""
    x = torch.as_tensor(images_uint8).to(device=device, dtype=torch.float32) / 127.5 - 1
    if x.shape[1] != channels:
        x = x.mean(dim=1, keepdim=True) if channels == 1 else x.expand(-1, channels, -1, -1)
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    return x
