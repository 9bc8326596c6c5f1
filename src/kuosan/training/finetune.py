"""Transfer learning: start a run from a parent checkpoint's weights, resize its class embedding,
freeze parts of the network, train LoRA adapters, and record where the weights came from.

    kuosan train --init-from runs/fm --data mnist --out runs/mnist-ft              # full fine-tune
    kuosan train --init-from runs/fm --data mnist --freeze "down.*,mid.*" ...      # train the decoder only
    kuosan train --init-from runs/fm --data mnist --lora-rank 8 --out runs/mnist-lora   # LoRA adapters

The parent is any kuosan checkpoint (or run directory), or a local diffusers ``UNet2DModel`` directory
(:mod:`kuosan.interop.diffusers`). Its architecture and parameterisation are taken over (the run's
``model`` and ``diffusion`` settings default to the parent's); only the number of classes may change:

- known classes keep their embedding rows, the "null" row (classifier-free guidance) moves to the new
  last index, and new classes start as copies of the null row: a new class begins as the
  unconditional model and learns from there;
- a child whose classes are finer labels inside the parent's (the 9 emoji classes fine-tuned on ``emoji:sub``)
  starts each class from the row of the class it lies in (:func:`class_sources`);
- an unconditional parent gets a zero class embedding (every class starts exactly as the parent);
- a conditional parent trained unconditionally has its null row folded into the embedding MLP's
  bias, so the child starts exactly as the parent's unconditional model.

Fine-tuning defaults: the learning rate is the preset's ÷ 10 unless ``--lr`` is given, and the warm-up
is 50 steps unless ``--warmup_steps`` is given. The run's config.json records its parent: path, weights
file, SHA-256 of that file and :func:`kuosan.nets.lora.weights_checksum` of the weights.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from fnmatch import fnmatchcase
from pathlib import Path

import torch
from torch import nn

from kuosan.checkpoint import file_sha256
from kuosan.diffusion.precond import EDMPrecond
from kuosan.errors import KuosanError
from kuosan.records import RunConfig, read_run_config, read_train_state, recorded_sha256
from kuosan.nets.classes import class_embeddings as _class_embeddings, resize_class_rows, resize_classes
from kuosan.nets.lora import (add_lora, is_adapter_key, lora_layers, mark_only_lora_trainable, merge_state_dict,
                              save_adapter, weights_checksum)

__all__ = ["FINETUNE_LR_FACTOR", "FINETUNE_WARMUP", "parameter_names", "freeze", "resize_classes",
           "resize_class_rows", "read_parent", "init_from", "finetune_config", "prepare_transfer",
           "finish_transfer", "file_sha256"]

FINETUNE_LR_FACTOR = 0.1  # a pretrained network sits near a good minimum: smaller steps than from scratch
FINETUNE_WARMUP = 50      # a short warm-up: Adam's moment estimates settle before full-size steps


def _short(name: str) -> str:
    return name[4:] if name.startswith("net.") else name


# --- freezing ------------------------------------------------------------------------------------

def parameter_names(module: nn.Module) -> list[str]:
    """Parameter names as freeze patterns see them (relative to the network, without ``net.``)."""
    return [_short(n) for n, _ in module.named_parameters()]


def _patterns(patterns) -> list[str]:
    items = patterns.split(",") if isinstance(patterns, str) else list(patterns or ())
    return [p.strip() for p in items if p and p.strip()]


def freeze(module: nn.Module, patterns) -> list[str]:
    """Stop training the parameters whose names match a glob in ``patterns`` (a comma-separated
    string or a list, e.g. ``"down.*,mid.*"``; names relative to the network); returns their names.
    A pattern that matches nothing, or freezing everything, is refused."""
    pats = _patterns(patterns)
    if not pats:
        return []
    frozen, used = [], set()
    params = list(module.named_parameters())
    for name, p in params:
        hits = [pat for pat in pats if fnmatchcase(_short(name), pat) or fnmatchcase(name, pat)]
        if hits:
            p.requires_grad_(False)
            frozen.append(name)
            used.update(hits)
    unused = [p for p in pats if p not in used]
    if unused:
        examples = ", ".join(parameter_names(module)[:3])
        raise KuosanError(f"--freeze pattern(s) {', '.join(unused)} match no parameter; names look like "
                          f"{examples} (globs: 'down.*' freezes the encoder)")
    if not any(p.requires_grad for _, p in params):
        raise KuosanError(f"--freeze {','.join(pats)} freezes every parameter; nothing would train")
    return frozen


# --- class embeddings (resizing lives in kuosan.nets.classes) ---------------------------------------

def _adapt_state(parent: dict, target: dict, embeds: dict, old: int, new: int, mismatch,
                 sources: list[int] | None = None) -> dict:
    """The parent's tensors in the child's layout (class rows resized, from ``sources`` where given), or
    ``mismatch(reason)``."""
    class_keys = {f"{p}.class_emb.weight" for p in embeds}
    out = {}
    for key, want in target.items():
        if key in class_keys:
            rows = resize_class_rows(parent.get(key), old, new, want.shape[1], sources)
            out[key] = rows.to(want.dtype)
            continue
        if key not in parent:
            mismatch(f"the parent has no {_short(key)}")
        got = parent[key]
        if tuple(got.shape) != tuple(want.shape):
            mismatch(f"{_short(key)} is {list(got.shape)} in the parent, {list(want.shape)} here")
        out[key] = got.to(want.dtype)
    # a parent's representation-alignment head trains with it only (kuosan.training.repa): the child may go without
    extra = [k for k in parent if k not in target and k not in class_keys and ".align_head." not in f".{k}"]
    if extra:
        mismatch(f"the parent has {len(extra)} tensor(s) this network lacks (e.g. {_short(extra[0])})")
    for prefix in embeds:
        if new == 0 and old > 0:  # fold the parent's null row into the bias (see resize_classes)
            bias = f"{prefix}.mlp.2.bias"
            out[bias] = out[bias] + parent[f"{prefix}.class_emb.weight"][old].to(out[bias].dtype)
    return out


# --- the parent ----------------------------------------------------------------------------------

def read_parent(path, weights: str = "ema") -> dict:
    """A kuosan parent checkpoint: {"config", "tensors" (adapters merged), "info" (the record)}."""
    from kuosan.interop import require_local_dir
    from kuosan.interop.diffusers import is_diffusers_dir
    from kuosan.checkpoint import resolve_checkpoint
    from kuosan.model import read_model_checkpoint

    local = require_local_dir(path, "--init-from")
    if is_diffusers_dir(local):
        raise KuosanError(f"{path} is a diffusers model: build the run's model from it with "
                          "kuosan.interop.diffusers.load_for_training (kuosan train --init-from does)")
    ckpt = resolve_checkpoint(local)
    saved = read_model_checkpoint(ckpt, weights=weights)
    record: RunConfig = saved["record"]
    file = "ema.safetensors" if weights == "ema" and (ckpt / "ema.safetensors").is_file() else "model.safetensors"
    tensors = saved["weights"]
    lora = record.lora
    if lora:  # a LoRA run as parent: its adapters become part of the weights
        tensors = merge_state_dict(tensors, {lora.get("name", "default"): float(lora["alpha"]) / int(lora["rank"])})
    state = read_train_state(ckpt)
    info = {"path": str(ckpt.resolve()), "weights": file, "sha256": recorded_sha256(ckpt, file),
            "weights_sha256": weights_checksum(tensors), "step": state.step if state is not None else None,
            "data": record.data.spec, "num_classes": record.network.num_classes,
            "class_names": list(record.data.class_names)}
    return {"config": saved["config"], "record": record, "tensors": tensors, "info": info}


def _signature(precond) -> dict:
    """What must agree between parent and child for the weights to mean the same thing."""
    sig = {"parameterisation": precond.kind, "network": type(getattr(precond, "net", precond)).__name__}
    schedule = getattr(precond, "schedule", None)
    if schedule is not None:
        sig["schedule"] = f"{schedule.beta_schedule}, {schedule.timesteps} steps"
    if isinstance(precond, EDMPrecond):
        sig["sigma_data"] = precond.sigma_data
    for emb in _class_embeddings(precond).values():
        sig["noise_scale"] = emb.noise_scale
    return sig


def _field_differences(parent_fields: dict, net) -> str:
    cfg = getattr(net, "cfg", None)
    if not dataclasses.is_dataclass(cfg):
        return ""
    mine = json.loads(json.dumps(dataclasses.asdict(cfg)))
    diffs = [f"{k} {parent_fields.get(k)!r} there, {mine.get(k)!r} here" for k in sorted(mine)
             if k != "num_classes" and k in parent_fields and parent_fields.get(k) != mine.get(k)]
    return f" (network settings that differ: {'; '.join(diffs)})" if diffs else ""


def class_sources(parent_names, child_names, child_data) -> list[int] | None:
    """For a child whose classes are finer labels inside the parent's (a model of the 9 emoji classes
    fine-tuned on ``emoji:sub`` or ``emoji:fine``): the parent class each child class lies in, so that it starts
    from that class's embedding row ("animal-bird" as "animals") rather than from whichever class had its index.
    None for any other pair (classes then keep their rows by index)."""
    from kuosan.data.emoji import CLASS_NAMES, groups_of, has_groups

    if not child_names or list(parent_names or []) != CLASS_NAMES or list(child_names) == CLASS_NAMES:
        return None
    if not isinstance(child_data, str) or not has_groups(child_data):
        return None
    try:
        return groups_of(list(child_names))
    except KuosanError:                     # emoji:fine names that the installed emoji.json does not know
        return None


@torch.no_grad()
def init_from(precond, parent_dir, *, num_classes: int, weights: str = "ema", class_names=None,
              data: str | None = None) -> dict:
    """Load a parent checkpoint's weights (EMA by default; not its optimiser) into ``precond``.

    The architecture must match except for the number of classes (resized as the module docstring
    says); anything else is a KuosanError naming the mismatch. Returns the parent record for the
    run's config.json.
    """
    from kuosan.model import model_from_checkpoint_config

    parent = read_parent(parent_dir, weights)
    record, info = parent["record"], parent["info"]
    with torch.device("meta"):
        parent_model = model_from_checkpoint_config(record)
    mine, theirs = _signature(precond), _signature(parent_model)
    for key in mine:
        if mine[key] != theirs.get(key):
            hint = ""
            if key in ("parameterisation", "schedule", "sigma_data", "noise_scale"):
                d = record.diffusion
                hint = (f"; fine-tuning keeps the parent's parameterisation: drop the --diffusion.* options or set "
                        f"--diffusion.precond {d.get('precond')}")
            raise KuosanError(f"--init-from {parent_dir}: the parent's {key} is {theirs.get(key)!r}, this run's "
                              f"is {mine[key]!r}{hint}")
    embeds = _class_embeddings(precond)
    if embeds and any(e.num_classes != num_classes for e in embeds.values()):
        raise KuosanError(f"init_from: the network was built for {next(iter(embeds.values())).num_classes} "
                          f"classes, not num_classes={num_classes}")
    old = info["num_classes"]
    if old != num_classes and not embeds:
        raise KuosanError(f"--init-from {parent_dir}: the parent has {old} classes, this run {num_classes}, and "
                          f"this network has no kuosan class embedding to resize")
    fields = record.network.fields

    def mismatch(reason):
        raise KuosanError(f"--init-from {parent_dir}: the parent's architecture differs from this run's: "
                          f"{reason}{_field_differences(fields, getattr(precond, 'net', precond))}; drop the "
                          "--model.* options to take over the parent's")

    target = {k: v for k, v in precond.state_dict().items() if not is_adapter_key(k)}
    sources = class_sources(info.get("class_names"), class_names, data) if embeds and old and num_classes else None
    state = _adapt_state(parent["tensors"], target, embeds, old, num_classes, mismatch, sources)
    missing, unexpected = precond.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not is_adapter_key(k)]:
        mismatch(f"the weights do not load ({(unexpected or missing)[0]})")
    kept = min(old, num_classes)
    info["classes"] = (f"{num_classes} finer classes, each from its class's row ({old} classes), null row "
                       f"{old} -> {num_classes}" if sources is not None else
                       f"{kept} kept, {max(0, num_classes - old)} new (from the null row), null row "
                       f"{old} -> {num_classes}" if old and num_classes else
                       "parent unconditional: zero class embedding" if num_classes else
                       "null row folded into the embedding bias" if old else "unconditional")
    return info


# --- configuration -------------------------------------------------------------------------------

def _explicit(overrides) -> set[tuple[str, str]]:
    """(section, name) of every setting given on the command line."""
    from kuosan.config import apply_overrides

    if not overrides:
        return set()
    data = apply_overrides({}, overrides if isinstance(overrides, dict) else list(overrides))
    return {(s, k) for s, values in data.items() for k in values}


def _parent_sections(path) -> dict:
    from kuosan.interop import require_local_dir
    from kuosan.interop.diffusers import is_diffusers_dir, training_sections
    from kuosan.checkpoint import resolve_checkpoint

    p = require_local_dir(path, "--init-from")
    if is_diffusers_dir(p):
        return training_sections(p)
    record = read_run_config(resolve_checkpoint(p))
    data = {"resolution": record.data.resolution, "channels": record.data.channels}
    return {"model": dict(record.sections.get("model", {})), "diffusion": dict(record.diffusion),
            "train": {k: v for k, v in data.items() if v is not None}}


def finetune_config(cfg, overrides=None):
    """``cfg`` for fine-tuning from ``cfg.train.init_from``: the parent's model and diffusion settings,
    image size and channels, lr ÷ 10 and a 50-step warm-up; every setting given in ``overrides`` (the
    command-line list or dict) is kept as given. Unchanged when there is no ``init_from``. Not for a
    config that is a run's own config.json: that holds the result already (lr ÷ 10 would apply twice)."""
    from kuosan.config import Config, config_from_dict, config_to_dict

    sections = typing.get_type_hints(Config)
    t = cfg.train
    if not getattr(t, "init_from", None):
        return cfg
    explicit = _explicit(overrides)
    data = config_to_dict(cfg)
    for section, values in _parent_sections(t.init_from).items():
        known = {f.name for f in dataclasses.fields(sections[section])}
        for key, value in values.items():
            if key in known and (section, key) not in explicit:
                data[section][key] = value
    if ("train", "lr") not in explicit:
        data["train"]["lr"] = t.lr * FINETUNE_LR_FACTOR
    if ("train", "warmup_steps") not in explicit:
        data["train"]["warmup_steps"] = FINETUNE_WARMUP
    return config_from_dict(data)


# --- the training loop's hook --------------------------------------------------------------------

def _saved_run_config(out) -> dict:
    """The run's config.json as JSON, or {} before its first checkpoint."""
    from kuosan.checkpoint import read_config_json, resolve_checkpoint

    try:
        return read_config_json(resolve_checkpoint(out, verify=False))
    except KuosanError:
        return {}


def _other_dataset(parent: str | None, child: str | None) -> bool:
    """Whether two data set specs name different sets (splits aside); unknown counts as the same."""
    if not parent or not child:
        return False
    return str(parent).split(":")[0] != str(child).split(":")[0]


def prepare_transfer(precond, spec: dict, cfg, *, num_classes: int, resume: bool = False, device=None,
                     log=print, class_names=None):
    """Apply ``cfg.train``'s transfer settings to a freshly built model: ``init_from`` (weights, or a
    diffusers model that replaces ``precond`` and ``spec``), ``lora_rank`` (adapters; only they train, plus
    the class embedding when the classes are new: another count or another data set), ``freeze``. On
    ``resume`` nothing is loaded (the checkpoint will be) but the structure is rebuilt the same way. Returns
    ``(precond, spec, extra)``; ``extra`` ({"parent", "lora"}) belongs in the run's config.json."""
    t = cfg.train
    extra, info, saved = {}, None, _saved_run_config(t.out) if resume else {}
    if getattr(t, "init_from", None):
        from kuosan.interop.diffusers import is_diffusers_dir, load_for_training

        if is_diffusers_dir(t.init_from):
            precond, spec, info = load_for_training(t.init_from, num_classes=num_classes, load_weights=not resume)
            kind = precond.kind
            if cfg.diffusion.precond != kind:
                raise KuosanError(f"--init-from {t.init_from} is a {kind}-prediction model, this run trains "
                                  f"{cfg.diffusion.precond}: set --diffusion.precond {kind} (kuosan train does "
                                  "this by itself, see kuosan.training.finetune.finetune_config)")
        elif resume and saved.get("parent"):
            info = saved["parent"]
        else:
            info = init_from(precond, t.init_from, num_classes=num_classes, class_names=class_names,
                             data=getattr(t, "data", None))
        extra["parent"] = saved.get("parent") or info
        log(f"fine-tuning from {info['path']} (weights {info['weights_sha256'][:12]}; classes: "
            f"{info.get('classes', 'n/a')})")
    rank = int(getattr(t, "lora_rank", 0) or 0)
    if rank:
        base_sha = (saved.get("lora") or {}).get("base_sha256") or (info or {}).get("weights_sha256") \
            or weights_checksum(precond)
        alpha = getattr(t, "lora_alpha", None)
        targets = getattr(t, "lora_targets", None) or "attn,conv"
        layers = add_lora(precond, rank, alpha, targets)
        # The class embedding trains beside the adapters when the classes are new or mean something else:
        # another count, or another data set (Fashion-MNIST's class 3 is a dress, MNIST's is a three).
        new_classes = (info is None or info.get("num_classes") != num_classes
                       or _other_dataset(info.get("data"), getattr(t, "data", None)))
        also = ["*class_emb.weight", "*class_embedding.weight"] if num_classes > 0 and new_classes else []
        also = [pat for pat in also if any(fnmatchcase(_short(n), pat) for n, _ in precond.named_parameters())]
        mark_only_lora_trainable(precond, also)
        extra["lora"] = {"name": "default", "rank": rank, "alpha": float(rank if alpha is None else alpha),
                         "targets": targets, "layers": [_short(n) for n in layers], "base_sha256": base_sha,
                         "num_classes": num_classes, "trains": also}
    if getattr(t, "freeze", None):
        freeze(precond, t.freeze)
    if extra or getattr(t, "freeze", None):
        n_all = sum(p.numel() for p in precond.parameters())
        n_train = sum(p.numel() for p in precond.parameters() if p.requires_grad)
        log(f"trainable: {n_train / 1e6:.3f} M of {n_all / 1e6:.3f} M parameters"
            + (f" (LoRA rank {rank} on {len(extra['lora']['layers'])} layers)" if rank else ""))
    return (precond.to(device) if device is not None else precond), spec, extra


def finish_transfer(model: nn.Module, out, run_config: dict, log=print) -> Path | None:
    """At the end of a LoRA run: write ``OUT/adapter.safetensors`` + ``adapter.json`` from ``model``
    (the EMA weights); returns the path, or None for other runs."""
    lora = run_config.get("lora")
    if not lora or not lora_layers(model):
        return None
    extras = {n: p for n, p in model.named_parameters()
              if any(fnmatchcase(_short(n), pat) for pat in lora.get("trains", []))}
    parent = run_config.get("parent") or {}
    meta = {"base": {"path": parent.get("path"), "weights": parent.get("weights"), "sha256": parent.get("sha256")},
            "num_classes": lora.get("num_classes"), "network": run_config.get("network"),
            "diffusion": run_config.get("diffusion"), "data": run_config.get("data"), "run": str(out)}
    path = save_adapter(model, Path(out) / "adapter", name=lora.get("name", "default"),
                        base_sha256=lora["base_sha256"], targets=lora.get("targets"), extra_tensors=extras,
                        metadata=meta)
    log(f"LoRA adapter: {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return path
