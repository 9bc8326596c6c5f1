"""The installed packages the ``emoji`` data set is drawn from: where they are, what files they hold, and
a fingerprint that changes when any of those files does.

Each art style is one package, installed once by ``scripts/install_emoji_data.sh`` (never at run time) into
``$KUOSAN_EMOJI_SOURCES`` (default ``$KUOSAN_CACHE/data/emoji-sources``, i.e.
``~/.cache/kuosan/data/emoji-sources``) as ``<package>-<version>/``:

    style      directory                         images              as shipped                  licence
    twitter    emoji-datasource-twitter-16.0.0   img/twitter/64/     64x64 RGBA PNG              CC-BY-4.0
    google     emoji-datasource-google-16.0.0    img/google/64/      64x64 RGBA PNG              Apache-2.0
    fluent     fluent-emoji-3d-1.1.0             assets/             256x256 RGBA WebP           MIT
    openmoji   openmoji-17.0.0                   png128/             SVG, rasterised to 128 px   CC-BY-SA-4.0
    gemojione  gemojione-3.3.0                   png/                64x64 palette PNG           CC-BY-SA-4.0

Every image is named by its code points (``1f600.png``, ``1F468-200D-1F373.png``, ``1f170-fe0f.webp``);
:func:`seq_key` turns a name into the key the styles are joined on. The categories come from ``emoji.json``
of either emoji-datasource package (the two ship the same file). A directory of another version of the same
package is used when the pinned one is absent (the newest, by version number).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from kuosan.errors import KuosanError, cache_root, user_path

SOURCES_ENV = "KUOSAN_EMOJI_SOURCES"
INSTALL = "bash scripts/install_emoji_data.sh"     # from a kuosan checkout; docs/data-emoji.md says how by hand


@dataclass(frozen=True)
class Style:
    """One art style: the package it comes from and where its images lie inside the package's directory."""

    name: str
    origin: str       # the package it comes from, as its installer names it
    package: str      # the directory's name without its version
    version: str      # the version the set-up installs
    images: str       # the images' folder inside the package's directory
    suffix: str       # their file suffix
    needs: str        # what the set-up needs to install it
    licence: str


STYLES = (
    Style("twitter", "npm emoji-datasource-twitter@16.0.0", "emoji-datasource-twitter", "16.0.0", "img/twitter/64",
          ".png", "npm", "CC-BY-4.0"),
    Style("google", "npm emoji-datasource-google@16.0.0", "emoji-datasource-google", "16.0.0", "img/google/64",
          ".png", "npm", "Apache-2.0"),
    Style("fluent", "npm @lobehub/fluent-emoji-3d@1.1.0", "fluent-emoji-3d", "1.1.0", "assets", ".webp", "npm",
          "MIT"),
    Style("openmoji", "npm openmoji@17.0.0", "openmoji", "17.0.0", "png128", ".png", "npm and rsvg-convert",
          "CC-BY-SA-4.0"),
    Style("gemojione", "Debian ruby-gemojione 3.3.0-1", "gemojione", "3.3.0", "png", ".png", "apt-get and dpkg-deb",
          "CC-BY-SA-4.0"),
)
STYLE_NAMES = [s.name for s in STYLES]
BY_NAME = {s.name: s for s in STYLES}
CATALOGUE_STYLES = ("twitter", "google")           # the packages that ship emoji.json


def sources_dir(root: str | None = None) -> Path:
    """``root``, else ``$KUOSAN_EMOJI_SOURCES``, else ``$KUOSAN_CACHE/data/emoji-sources`` (``~/.cache/kuosan``)."""
    if root or os.environ.get(SOURCES_ENV):
        return user_path(root or os.environ[SOURCES_ENV], "the emoji sources directory")
    return cache_root("data", "emoji-sources")


def _version_key(path: Path, package: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"[.-]", path.name[len(package) + 1:])]


def package_dir(style: Style, root: str | None = None) -> Path | None:
    """The style's package directory: the pinned version, else the newest other version; ``None`` if absent."""
    base = sources_dir(root)
    pinned = base / f"{style.package}-{style.version}"
    if (pinned / style.images).is_dir():
        return pinned
    found = [p for p in base.glob(f"{style.package}-[0-9]*") if (p / style.images).is_dir()]
    return max(found, key=lambda p: _version_key(p, style.package)) if found else None


def missing_message(style: Style, root: str | None = None) -> str:
    """One line: which package ``emoji:<style>`` needs, where it was looked for, how to install it."""
    return (f"`emoji:{style.name}` needs {style.origin}, not found in {sources_dir(root)}/{style.package}-*: "
            f"run `{INSTALL}` (it needs {style.needs}), or set {SOURCES_ENV} to the directory holding it")


def require_dir(style: Style, root: str | None = None) -> Path:
    """:func:`package_dir`, or a :class:`KuosanError` that says how to install the package."""
    d = package_dir(style, root)
    if d is None:
        raise KuosanError(missing_message(style, root))
    return d


def seq_key(name: str) -> str:
    """A file name or ``unified`` string -> the join key: upper-case code points without U+FE0F (``1F170``)."""
    return "-".join(p for p in name.upper().replace("_", "-").split("-") if p and p != "FE0F")


def list_images(style: Style, root: str | None = None) -> dict[str, Path]:
    """``{seq_key: file}`` of the style's images (raises if the package is not installed)."""
    folder = require_dir(style, root) / style.images
    return {seq_key(p.name[:-len(style.suffix)]): p for p in sorted(folder.iterdir())
            if p.name.lower().endswith(style.suffix) and not p.name.startswith(".")}


def catalogue_file(root: str | None = None) -> Path:
    """``emoji.json`` of the first emoji-datasource package installed, or a one-line error saying how to install it."""
    for name in CATALOGUE_STYLES:
        d = package_dir(BY_NAME[name], root)
        if d is not None and (d / "emoji.json").is_file():
            return d / "emoji.json"
    raise KuosanError(f"the `emoji` data set is not installed (no emoji-datasource-twitter or -google with "
                      f"emoji.json in {sources_dir(root)}): run `{INSTALL}` (it needs npm), or set {SOURCES_ENV} "
                      "to the directory holding the packages; `emoji:noto` renders the older set from a font")


def installed(root: str | None = None) -> list[Style]:
    """The styles whose package is installed, in :data:`STYLES` order."""
    return [s for s in STYLES if package_dir(s, root) is not None]


def _files_digest(folder: Path) -> str:
    """A hash of every file's name, size and modification time under ``folder`` (no file is read)."""
    h = hashlib.sha256()
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_file():
            st = entry.stat()
            h.update(f"{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def fingerprint(style: Style, root: str | None = None) -> list:
    """What the style's decoded images depend on: its package directory's name and its files' stats."""
    d = require_dir(style, root)
    return [style.name, d.name, _files_digest(d / style.images)]


def catalogue_fingerprint(root: str | None = None) -> list:
    """The name, size and modification time of the ``emoji.json`` in use."""
    p = catalogue_file(root)
    st = p.stat()
    return [p.parent.name, p.name, st.st_size, st.st_mtime_ns]
