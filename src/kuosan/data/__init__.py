"""Image data: built-in sets, image folders and ``.npz`` files, loaded once into memory as uint8.

``load_dataset("fashion-mnist:test")``, ``load_dataset("path/to/folder", resolution=64)``,
``load_dataset("samples.npz")``; scale batches with :func:`to_model_range`, samples back with :func:`to_uint8`.
"""

from kuosan.data.dataset import ImageDataset, to_model_range, to_uint8
from kuosan.data.sources import dataset_fingerprint, load_dataset

__all__ = ["ImageDataset", "dataset_fingerprint", "load_dataset", "to_model_range", "to_uint8"]
