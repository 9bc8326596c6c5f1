"""kuosan: train, sample and evaluate diffusion models for image generation.

``import kuosan`` needs torch and numpy only; heavier pieces load where they are used.
"""

__version__ = "0.1.0"

from kuosan.errors import KuosanError  # noqa: E402


def load(checkpoint_dir, device=None, use_ema=True, autoencoder=None, adapters=()):
    """Load a checkpoint (or a local diffusers model) directory into a :class:`kuosan.pipeline.Pipeline`
    ready to sample. ``autoencoder``: a latent model's autoencoder directory, only if it moved since
    training; ``adapters``: LoRA adapters (paths or ``(path, weight)`` pairs)."""
    from kuosan.pipeline import Pipeline

    return Pipeline.load(checkpoint_dir, device=device, use_ema=use_ema, autoencoder=autoencoder,
                         adapters=adapters)


__all__ = ["KuosanError", "load", "__version__"]
