"""A model's card: what it was trained on, for how long, how big it is, how it samples by default, and its
evaluation report (``kuosan evaluate``'s report.json and plots) when one lies in the run's folder."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from kuosan.serve.models import Loaded, read_json

__all__ = ["model_card", "find_report", "report_file"]

_REPORT_DEPTH = 2           # report.json in the run folder or a folder or two below it (eval/, demo/)
_PLOT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}\.png$")


def _run_dir(loaded: Loaded) -> Path:
    """The folder that holds the model's outputs: the run for a kuosan checkpoint, else the model folder."""
    p = Path(loaded.pipe.path)
    return p.parent.parent if p.parent.name == "checkpoints" else Path(loaded.entry.path)


def find_report(run: Path) -> tuple[Path, dict] | None:
    """The newest evaluation report under ``run`` (not inside checkpoints/): (its folder, its JSON)."""
    found = []
    for depth in range(_REPORT_DEPTH + 1):
        for f in run.glob("/".join(["*"] * depth + ["report.json"])):
            if "checkpoints" in f.relative_to(run).parts or any(p.startswith(".") for p in f.relative_to(run).parts):
                continue
            data = read_json(f)
            data = data.get("evaluation") if isinstance(data, dict) and "quality" not in data else data
            if isinstance(data, dict) and "quality" in data:
                found.append((f.stat().st_mtime, f.parent, data))
    if not found:
        return None
    _, folder, data = max(found, key=lambda t: t[0])
    return folder, data


def report_file(loaded: Loaded, name: str) -> Path | None:
    """A plot of the model's report by file name: only a PNG the report lists, directly in its folder."""
    got = find_report(_run_dir(loaded))
    if got is None or not isinstance(name, str) or not _PLOT.match(name):
        return None
    folder, data = got
    if name not in [str(p) for p in data.get("plots") or []]:
        return None
    path = folder / name
    if path.is_symlink() or not path.is_file() or path.resolve().parent != folder.resolve():
        return None
    return path


def _report_summary(folder: Path, data: dict, run: Path) -> dict:
    try:
        from kuosan.evaluation.render import summary_rows

        rows = [list(r) for r in summary_rows(data)]
    except (KeyError, TypeError, ValueError, AttributeError):
        rows = []  # a report of another layout: its plots still show
    plots = [str(p) for p in data.get("plots") or [] if isinstance(p, str) and _PLOT.match(p)]
    return {"folder": folder.relative_to(run).as_posix() or ".", "rows": rows, "plots": plots,
            "reference": (data.get("reference") or {}).get("source"), "flags": list(data.get("flags") or []),
            "images": (data.get("generated") or {}).get("images")}


def _trained_steps(loaded: Loaded) -> int | None:
    state = read_json(Path(loaded.pipe.path) / "state.json")
    step = state.get("step") if isinstance(state, dict) else None
    return step if isinstance(step, int) else None


def _groups(pipe) -> dict:
    """A model trained on finer labels than its data set's classes (``emoji:sub``): those classes, which the
    class fields also take, and how many of the model's classes each holds; none where they cannot be mapped."""
    groups = pipe.groups
    if not groups:
        return {}
    from kuosan.data.emoji import CLASS_NAMES, groups_of
    from kuosan.errors import KuosanError

    try:
        of = groups_of(pipe.class_names)
    except KuosanError:                     # emoji:fine without the installed emoji.json: names it cannot map
        return {}
    return {"groups": groups, "group_sizes": {n: of.count(CLASS_NAMES.index(n)) for n in groups}}


def model_card(loaded: Loaded) -> dict:
    """Everything the page shows about a model, as plain JSON values."""
    pipe, cfg = loaded.pipe, loaded.pipe.config
    train = cfg.get("train") or {}
    run = _run_dir(loaded)
    got = find_report(run)
    c, h, w = pipe.pixel_shape
    return {
        "name": loaded.entry.name, "kind": loaded.entry.kind, "checksum": loaded.checksum,
        "dataset": pipe.dataset or None, "classes": pipe.class_names or [str(k) for k in range(pipe.num_classes)],
        "num_classes": pipe.num_classes, "image": [h, w, c], "latent": pipe.autoencoder is not None,
        **_groups(pipe),
        "network": (cfg.get("network") or {}).get("kind"),
        "parameters": int(sum(p.numel() for p in pipe.precond.parameters())),
        "precond": (cfg.get("diffusion") or {}).get("precond"),
        "trained_steps": _trained_steps(loaded), "train": {k: train.get(k) for k in ("steps", "batch", "lr", "seed")
                                                           if k in train},
        "parent": (cfg.get("parent") or {}).get("path"), "lora": bool(cfg.get("lora")),
        "sample": dataclasses.asdict(pipe.sample_config),
        "report": None if got is None else _report_summary(got[0], got[1], run),
    }
