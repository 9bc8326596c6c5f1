"""Interoperability with other diffusion libraries (``kuosan.interop.diffusers``).

Everything here reads local files only: kuosan never downloads at run time. Nothing heavy is
imported by this package itself.
"""

from __future__ import annotations

from pathlib import Path

from kuosan.errors import KuosanError, user_path

__all__ = ["require_local_dir", "looks_like_hub_name"]


def looks_like_hub_name(path) -> bool:
    """``owner/name`` that is not a local path (a typo under an existing folder is not a hub name)."""
    text = str(path)
    return (text.count("/") == 1 and not text.startswith((".", "/", "~")) and " " not in text
            and not Path(text).exists() and not Path(text.split("/")[0]).exists())


def require_local_dir(path, what: str = "model") -> Path:
    """``path`` as an existing local directory, or a KuosanError that says kuosan does not download.

    A string like ``google/ddpm-cifar10-32`` that is not a directory here is most likely a Hugging Face
    hub name: it is refused without any network access.
    """
    p = user_path(path, what)
    if p.is_dir():
        return p
    if p.exists():
        raise KuosanError(f"{what} {str(path)!r} is a file; give the directory that holds it")
    text = str(path)
    hint = (f"; kuosan never downloads: if it is a Hugging Face hub name, fetch it on a machine with network "
            f"access (e.g. `huggingface-cli download {text} --local-dir DIR`) and pass DIR"
            if looks_like_hub_name(text) else "")
    raise KuosanError(f"{what} {text!r} is not a local directory{hint}")
