"""A stand-in ``torchvision`` for benchmarking lucidrains' ``denoising_diffusion_pytorch``.

That package imports torchvision at module level for its Trainer, datasets and FID code; its
``Unet`` and ``GaussianDiffusion`` never call it. Where the real torchvision is missing or cannot
load beside the installed torch (a registry build for another torch), :func:`shim_torchvision`
registers a placeholder module tree so the import succeeds. Any call into the placeholder raises.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types


class _Placeholder(types.ModuleType):
    """A module whose every public attribute is another placeholder, created on first access."""

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        child = _Placeholder(f"{self.__name__}.{attr}")
        child.__spec__ = importlib.machinery.ModuleSpec(child.__name__, None)
        sys.modules[child.__name__] = child
        setattr(self, attr, child)
        return child

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self.__name__} is a benchmark placeholder: torchvision is not usable here")


def shim_torchvision() -> bool:
    """Install the placeholder unless the real torchvision imports; returns whether it was installed."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # ImportError, or a RuntimeError from mismatched compiled operators
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        root = _Placeholder("torchvision")
        root.__version__ = "0+placeholder"
        root.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
        sys.modules["torchvision"] = root
        return True
    return False
