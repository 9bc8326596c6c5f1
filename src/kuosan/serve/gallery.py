"""The gallery: every result the page makes, kept under the output folder, newest first.

Each request gets a folder ``OUT/20250131-142501-123-9f3a/`` with its PNGs (each carrying its parameters, see
:mod:`kuosan.pnginfo`), a grid, the uploaded input and mask of an edit, and ``entry.json`` (written last: a
folder without it is not listed). Requests name an entry by its id and a file by its name; both must match
the patterns below and name a regular file directly inside the entry's folder, so no request reaches a path
outside the gallery.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path

import numpy as np

from kuosan.errors import KuosanError
from kuosan.serve.models import read_json

__all__ = ["Gallery", "ENTRY_ID", "FILE_NAME"]

ENTRY_ID = re.compile(r"^\d{8}-\d{6}-\d{3}-[0-9a-f]{4}$")
FILE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,60}\.png$")
_SHOWN_WIDTH = 256          # grids are enlarged (nearest neighbour) to at least this many pixels across


def _scale(img: np.ndarray, width: int = _SHOWN_WIDTH) -> int:
    return max(1, width // img.shape[1])


class Gallery:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise KuosanError(f"cannot make the gallery folder {self.root}: {e.strerror or e}") from None

    def _new_folder(self) -> tuple[str, Path]:
        newest = max(self.ids(), default="")[:-5]  # its time part: a new entry's must sort after it
        for _ in range(64):
            now = time.time()
            stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f"-{int(now * 1000) % 1000:03d}"
            if stamp == newest:  # the same millisecond as the newest entry: "newest first" needs a later one
                time.sleep(0.001)
                continue
            entry_id = f"{stamp}-{secrets.token_hex(2)}"
            folder = self.root / entry_id
            try:
                folder.mkdir()
                return entry_id, folder
            except FileExistsError:
                continue
        raise KuosanError(f"cannot make a new folder in the gallery {self.root}")

    def add(self, params: dict, made, *, model: str, checksum: str, seconds: float) -> dict:
        """Write ``made`` (a :class:`kuosan.serve.jobs.Made`) as a new entry; the entry's JSON."""
        from kuosan.checkpoint import atomic_write_bytes, write_failure
        from kuosan.pnginfo import encode_png

        entry_id, folder = self._new_folder()
        images, files = [], {}
        try:
            for k, (img, p) in enumerate(made.images):
                name = f"{k:03d}-seed{p.get('seed', 0)}.png"
                atomic_write_bytes(folder / name, encode_png(img, p), durable=False)
                images.append({"file": name, **{key: p[key] for key in ("seed", "class", "class_name", "t", "edit")
                                                if key in p}})
            if made.grid is not None:
                grid_params = {**made.images[0][1], "seeds": params.get("seeds")}
                atomic_write_bytes(folder / "grid.png", encode_png(made.grid, grid_params, _scale(made.grid)),
                                   durable=False)
                files["grid"] = "grid.png"
            for name, img in made.inputs.items():
                atomic_write_bytes(folder / f"{name}.png", encode_png(img, {"mode": "input"}), durable=False)
                files[name] = f"{name}.png"
            entry = {"id": entry_id, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "mode": params["mode"],
                     "model": model, "checksum": checksum, "params": params, "images": images, "files": files,
                     "note": made.note, "seconds": round(seconds, 3)}
            atomic_write_bytes(folder / "entry.json", json.dumps(entry, indent=1).encode(), durable=False)
        except OSError as e:
            what, fix = write_failure(e)
            raise KuosanError(f"{what} while writing to the gallery {folder}; {fix}") from None
        return entry

    def ids(self) -> list[str]:
        """Entry ids, newest first (ids sort by the time they were made)."""
        try:
            names = [p.name for p in self.root.iterdir() if ENTRY_ID.match(p.name) and p.is_dir()
                     and not p.is_symlink()]
        except OSError:
            return []
        return sorted(names, reverse=True)

    def entries(self, offset: int = 0, limit: int = 50) -> tuple[list[dict], int]:
        """A page of entries, newest first, and how many there are in all."""
        ids = self.ids()
        out = [e for e in (self.entry(i, missing_ok=True) for i in ids[offset:offset + limit]) if e is not None]
        return out, len(ids)

    def entry(self, entry_id, missing_ok: bool = False) -> dict | None:
        if not isinstance(entry_id, str) or not ENTRY_ID.match(entry_id):
            raise KuosanError("not a gallery entry")
        data = read_json(self.root / entry_id / "entry.json")
        if not isinstance(data, dict) or data.get("id") != entry_id:
            if missing_ok:
                return None
            raise KuosanError(f"no gallery entry {entry_id}")
        return data

    def file(self, entry_id, name) -> Path:
        """The path of file ``name`` of entry ``entry_id``: only a PNG the entry lists, inside its folder."""
        entry = self.entry(entry_id)
        listed = {i["file"] for i in entry.get("images", [])} | set(entry.get("files", {}).values())
        if not isinstance(name, str) or not FILE_NAME.match(name) or name not in listed:
            raise KuosanError(f"no file {str(name)[:60]!r} in gallery entry {entry_id}")
        folder = (self.root / entry_id).resolve()
        path = self.root / entry_id / name
        if path.is_symlink() or not path.is_file() or path.resolve().parent != folder:
            raise KuosanError(f"no file {name!r} in gallery entry {entry_id}")
        return path
