"""Low-rank adapters (LoRA, Hu et al. 2021) on the convolutions and linear maps of any network.

A layer with adapters computes (Hu et al. 2021, eq. 3, with several adapters mixed):

    h = W x + b + Σ_a w_a · (α_a / r_a) · B_a A_a x

Notation:
    W, b   the base layer's weight and bias (frozen while the adapters train)
    A      ``down``: a convolution of the base's geometry (kernel, stride, padding) to r channels, or a
           linear map to r features; Kaiming-uniform initialised (torch's default for the layer)
    B      ``up``: a 1×1 convolution (or linear map) from r back to the base's outputs; zero-initialised,
           so that ΔW = 0 and the network is unchanged before training (Hu et al. 2021, §4.1)
    α / r  the adapter's fixed scale (α defaults to r); ``w`` its mixing weight (1 when trained)
    ΔW     = w · (α / r) · B A, what :func:`merge_lora` adds to W and :func:`unmerge_lora` subtracts

A converted layer (:class:`LoRAConv2d`, :class:`LoRALinear`) keeps the base's parameter names
(``qkv.weight``, ``qkv.bias``) and adds ``qkv.lora.<adapter>.down.weight`` / ``.up.weight``, so base
checkpoints still load by name. An adapter file is a safetensors file of ``<layer>.down`` /
``<layer>.up`` tensors plus a JSON file beside it (rank, α, targets, layer shapes, and the SHA-256 of the
base weights it was trained on: it loads only onto that base unless told otherwise).
"""

from __future__ import annotations

import hashlib
import json
import os
from fnmatch import fnmatchcase
from pathlib import Path

import torch
from torch import nn

from kuosan.errors import KuosanError
from kuosan.nets.classes import resize_classes
from kuosan.nets.layers import Conv2d

__all__ = ["TARGETS", "Adapter", "LoRAConv2d", "LoRALinear", "add_lora", "find_targets", "lora_layers",
           "adapter_names", "is_adapter_key", "expand_targets", "mark_only_lora_trainable", "set_adapter_weight", "merge_lora",
           "unmerge_lora", "remove_lora", "weights_checksum", "save_adapter", "read_adapter", "load_adapter",
           "mix_adapters", "apply_lora_config", "merge_state_dict"]

FORMAT = "kuosan-lora"

# Named groups of layer-name patterns (globs on module names, with or without the precond's "net.").
TARGETS = {
    # attention projections: kuosan's UNet (1x1 convolutions) and DiT (linear), diffusers' Attention
    "attn": ("*.qkv", "*.proj", "*.to_q", "*.to_k", "*.to_v", "*.to_out.0"),
    # the two 3x3 convolutions of every residual block (kuosan ResBlock, diffusers ResnetBlock2D)
    "conv": ("*.conv1", "*.conv2"),
}


def _short(name: str) -> str:
    """A parameter or module name relative to the network (a precond's leading ``net.`` dropped)."""
    return name[4:] if name.startswith("net.") else name


def is_adapter_key(name: str) -> bool:
    return ".lora." in f".{name}."


class Adapter(nn.Module):
    """One low-rank update B·A of a base layer, scaled by w · α / r."""

    def __init__(self, base: nn.Module, rank: int, alpha: float):
        super().__init__()
        kw = {"device": base.weight.device, "dtype": base.weight.dtype, "bias": False}
        if isinstance(base, nn.Conv2d):
            self.down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding,
                                  base.dilation, padding_mode=base.padding_mode, **kw)
            self.up = nn.Conv2d(rank, base.out_channels, 1, **kw)
        else:
            self.down = nn.Linear(base.in_features, rank, **kw)
            self.up = nn.Linear(rank, base.out_features, **kw)
        nn.init.zeros_(self.up.weight)  # B = 0: the adapted network starts as the base
        self.rank, self.alpha, self.mix = rank, float(alpha), 1.0

    @property
    def scale(self) -> float:
        return self.mix * self.alpha / self.rank

    def forward(self, x):
        return self.up(self.down(x)) * self.scale

    def delta_weight(self) -> torch.Tensor:
        """ΔW = w · (α / r) · B A in the base weight's shape, in float64."""
        up = self.up.weight.detach().flatten(1).double()          # (out, r)
        down = self.down.weight.detach().double()                 # (r, in, *kernel)
        return (up @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:]) * self.scale


class _LoRAMixin:
    """Forward of the base layer plus every adapter not merged into the base weight."""

    def _lora_setup(self):
        self.lora = nn.ModuleDict()
        self.merged: list[str] = []  # adapters whose ΔW is inside ``weight``, in merge order

    def forward(self, x):
        out = super().forward(x)
        for name, adapter in self.lora.items():
            if name not in self.merged:
                out = out + adapter(x)
        return out


class LoRAConv2d(_LoRAMixin, Conv2d):
    """An ``nn.Conv2d`` with LoRA adapters (same ``weight``/``bias`` names as the base; the base convolution
    on kuosan's CPU kernels where :class:`kuosan.nets.layers.Conv2d` takes it)."""


class LoRALinear(_LoRAMixin, nn.Linear):
    """An ``nn.Linear`` with LoRA adapters (same ``weight``/``bias`` names as the base)."""


def _convert(layer: nn.Module) -> nn.Module:
    """The LoRA version of a Conv2d/Linear, sharing its parameters (no copy, no re-initialisation)."""
    if isinstance(layer, _LoRAMixin):
        return layer
    has_bias = layer.bias is not None
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise KuosanError("LoRA supports convolutions with groups=1 only")
        new = LoRAConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                         padding=layer.padding, dilation=layer.dilation, bias=has_bias,
                         padding_mode=layer.padding_mode, device="meta")
    else:
        new = LoRALinear(layer.in_features, layer.out_features, bias=has_bias, device="meta")
    new.weight = layer.weight
    if has_bias:
        new.bias = layer.bias
    new._lora_setup()
    new._base_class = type(layer)  # what remove_lora gives back
    if isinstance(new, Conv2d) and not isinstance(layer, Conv2d):
        new._fast = False  # another library's convolution (diffusers'): computed as it was, bit for bit
    return new.train(layer.training)


def _revert(layer: _LoRAMixin) -> nn.Module:
    """The plain layer again, sharing the (possibly merged) parameters."""
    has_bias = layer.bias is not None
    if isinstance(layer, nn.Conv2d):
        conv = getattr(layer, "_base_class", Conv2d)
        new = conv(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                   padding=layer.padding, dilation=layer.dilation, bias=has_bias, padding_mode=layer.padding_mode,
                   device="meta")
    else:
        new = nn.Linear(layer.in_features, layer.out_features, bias=has_bias, device="meta")
    new.weight = layer.weight
    if has_bias:
        new.bias = layer.bias
    return new.train(layer.training)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _resolve(model: nn.Module, short: str) -> str | None:
    """The module name in ``model`` of a network-relative name (tries it as is, then under ``net.``)."""
    names = dict(model.named_modules())
    for cand in (short, f"net.{short}"):
        if cand in names:
            return cand
    return None


def expand_targets(targets) -> tuple[str, ...]:
    """Patterns from a comma-separated string or a list; group names (``attn``, ``conv``) expanded."""
    items = targets.split(",") if isinstance(targets, str) else list(targets or ())
    out = []
    for item in (str(s).strip() for s in items):
        if item:
            out.extend(TARGETS.get(item, (item,)))
    if not out:
        raise KuosanError(f"no LoRA targets given; use {', '.join(TARGETS)} or glob patterns on layer names")
    return tuple(dict.fromkeys(out))


def find_targets(model: nn.Module, targets="attn,conv") -> list[str]:
    """Names of the Conv2d/Linear layers of ``model`` matched by ``targets`` (globs; see :data:`TARGETS`)."""
    patterns = expand_targets(targets)
    found = []
    for name, module in model.named_modules():
        if not name or is_adapter_key(name) or not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        if any(fnmatchcase(name, p) or fnmatchcase(_short(name), p) for p in patterns):
            found.append(name)
    if not found:
        examples = [_short(n) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))][:4]
        raise KuosanError(f"LoRA targets {','.join(patterns)} match no convolution or linear layer; "
                          f"layer names look like {', '.join(examples)}")
    return found


def lora_layers(model: nn.Module) -> dict[str, _LoRAMixin]:
    return {name: m for name, m in model.named_modules() if isinstance(m, _LoRAMixin)}


def adapter_names(model: nn.Module) -> list[str]:
    return list(dict.fromkeys(a for layer in lora_layers(model).values() for a in layer.lora))


def _attach(model: nn.Module, layer_name: str, rank: int, alpha: float, name: str) -> Adapter:
    layer = _convert(model.get_submodule(layer_name))
    _set_module(model, layer_name, layer)
    if name in layer.lora:
        raise KuosanError(f"layer {_short(layer_name)} already has an adapter called {name!r}")
    layer.lora[name] = Adapter(layer, rank, alpha)
    return layer.lora[name]


def add_lora(model: nn.Module, rank: int, alpha: float | None = None, targets="attn,conv",
             name: str = "default") -> list[str]:
    """Add a fresh adapter called ``name`` (rank ``rank``, scale α/r, α = r by default) to every layer
    matched by ``targets``; returns the layer names. The base parameters are left as they are."""
    if not isinstance(rank, int) or rank < 1:
        raise KuosanError(f"LoRA rank must be a positive whole number, got {rank!r}")
    alpha = float(rank if alpha is None else alpha)
    layers = find_targets(model, targets)
    for layer_name in layers:
        _attach(model, layer_name, rank, alpha, name)
    return layers


def mark_only_lora_trainable(model: nn.Module, also=()) -> list[str]:
    """requires_grad only for adapter parameters (and those whose name matches a glob in ``also``);
    returns the names of the trainable parameters."""
    trainable = []
    for pname, p in model.named_parameters():
        keep = is_adapter_key(pname) or any(fnmatchcase(_short(pname), pat) for pat in also)
        p.requires_grad_(keep)
        if keep:
            trainable.append(pname)
    return trainable


def set_adapter_weight(model: nn.Module, name: str, weight: float) -> None:
    """Change an (unmerged) adapter's mixing weight w."""
    hit = False
    for layer in lora_layers(model).values():
        if name in layer.lora:
            if name in layer.merged:
                raise KuosanError(f"adapter {name!r} is merged; unmerge it before changing its weight")
            layer.lora[name].mix, hit = float(weight), True
    if not hit:
        raise KuosanError(f"no adapter called {name!r}; the model has {adapter_names(model) or 'none'}")


@torch.no_grad()
def merge_lora(model: nn.Module, names=None) -> None:
    """Add ΔW of the named adapters (default: all) into the base weights; forward is unchanged."""
    for layer in lora_layers(model).values():
        for name, adapter in layer.lora.items():
            if (names is None or name in names) and name not in layer.merged:
                layer.weight.copy_((layer.weight.double() + adapter.delta_weight()).to(layer.weight.dtype))
                layer.merged.append(name)


@torch.no_grad()
def unmerge_lora(model: nn.Module, names=None) -> None:
    """Subtract ΔW again (last merged first): the base weights come back up to float rounding."""
    for layer in lora_layers(model).values():
        for name in reversed(list(layer.merged)):
            if names is None or name in names:
                adapter = layer.lora[name]
                layer.weight.copy_((layer.weight.double() - adapter.delta_weight()).to(layer.weight.dtype))
                layer.merged.remove(name)


def remove_lora(model: nn.Module, name: str | None = None, *, keep_merged: bool = False) -> None:
    """Delete adapter ``name`` (default: all). Merged ones are unmerged first unless ``keep_merged``
    (then their update stays in the base weights: how a merged checkpoint is made). Layers left
    without adapters become plain Conv2d/Linear again."""
    for layer_name, layer in lora_layers(model).items():
        for a in [a for a in layer.lora if name is None or a == name]:
            if a in layer.merged:
                if not keep_merged:
                    unmerge_lora(layer, [a])
                else:
                    layer.merged.remove(a)
            del layer.lora[a]
        if not len(layer.lora):
            _set_module(model, layer_name, _revert(layer))


# --- identity of the base weights ----------------------------------------------------------------

def weights_checksum(model_or_state) -> str:
    """SHA-256 of a model's weights (names relative to the network, dtypes, shapes and bytes, adapter
    tensors excluded): the same for a precond and its network, for a model and its saved file."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    h = hashlib.sha256()
    for name in sorted(state, key=_short):
        if is_adapter_key(name):
            continue
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{_short(name)}|{str(t.dtype).replace('torch.', '')}|{list(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# --- adapter files -------------------------------------------------------------------------------

def _paths(path) -> tuple[Path, Path]:
    """(``.safetensors``, ``.json``) of an adapter given as either file, a stem, or a run directory."""
    p = Path(path)
    if p.is_dir():
        p = p / "adapter.safetensors"
    if p.suffix == ".json":
        p = p.with_suffix(".safetensors")
    elif p.suffix != ".safetensors":
        p = p.parent / f"{p.name}.safetensors"
    return p, p.with_suffix(".json")


def _write_atomic(path: Path, write) -> None:
    tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_adapter(model: nn.Module, path, *, name: str = "default", base_sha256: str | None = None,
                 targets=None, extra_tensors: dict | None = None, metadata: dict | None = None) -> Path:
    """Write adapter ``name`` of ``model`` as ``PATH.safetensors`` + ``PATH.json``; returns the first.

    ``base_sha256``: :func:`weights_checksum` of the base it was trained on (default: the model's own
    unmerged weights). ``extra_tensors``: full tensors that replace base parameters when the adapter
    is loaded (e.g. a trained class embedding), by network-relative name.
    """
    from safetensors.torch import save_file

    st_path, json_path = _paths(path)
    tensors, layers, rank, alpha = {}, {}, None, None
    for layer_name, layer in lora_layers(model).items():
        if name not in layer.lora:
            continue
        if name in layer.merged:
            raise KuosanError(f"adapter {name!r} is merged into {_short(layer_name)}; unmerge it before saving")
        a = layer.lora[name]
        short = _short(layer_name)
        tensors[f"{short}.down"] = a.down.weight.detach().float().cpu().contiguous()
        tensors[f"{short}.up"] = a.up.weight.detach().float().cpu().contiguous()
        layers[short] = {"kind": "conv2d" if isinstance(layer, nn.Conv2d) else "linear",
                         "shape": list(layer.weight.shape)}
        rank, alpha = a.rank, a.alpha
    if not layers:
        raise KuosanError(f"the model has no adapter called {name!r} (it has {adapter_names(model) or 'none'})")
    if base_sha256 is None:
        if any(layer.merged for layer in lora_layers(model).values()):
            raise KuosanError("cannot compute the base checksum of a model with merged adapters; unmerge first")
        base_sha256 = weights_checksum(model)
    for key, t in (extra_tensors or {}).items():
        tensors[f"full.{_short(key)}"] = t.detach().float().cpu().contiguous()
    meta = {**(metadata or {}), "format": FORMAT, "version": 1, "name": name, "rank": rank, "alpha": alpha,
            "targets": list(expand_targets(targets)) if targets else None, "layers": layers,
            "replaces": sorted(_short(k) for k in (extra_tensors or {})), "base_sha256": base_sha256}
    st_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(st_path, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}))
    meta["sha256"] = hashlib.sha256(st_path.read_bytes()).hexdigest()
    _write_atomic(json_path, lambda p: p.write_text(json.dumps(meta, indent=1)))
    return st_path


def read_adapter(path) -> tuple[dict, dict]:
    """(tensors, metadata) of an adapter file, checked for completeness and its recorded checksum."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    st_path, json_path = _paths(path)
    if not st_path.is_file() or not json_path.is_file():
        raise KuosanError(f"adapter {path} not found: expected {st_path.name} and {json_path.name} "
                          f"in {st_path.parent}")
    try:
        meta = json.loads(json_path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise KuosanError(f"cannot read {json_path}: {str(e).splitlines()[0]}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("layers"), dict):
        raise KuosanError(f"{json_path} is not a kuosan LoRA adapter description")
    if meta.get("sha256") and hashlib.sha256(st_path.read_bytes()).hexdigest() != meta["sha256"]:
        raise KuosanError(f"{st_path} does not match the checksum recorded in {json_path.name}")
    try:
        tensors = load_file(str(st_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise KuosanError(f"{st_path} is not a readable safetensors file ({str(e).splitlines()[0]})") from None
    for layer in meta["layers"]:
        if f"{layer}.down" not in tensors or f"{layer}.up" not in tensors:
            raise KuosanError(f"{st_path} lacks the tensors of layer {layer}")
    return tensors, meta


def _check_fits(model: nn.Module, tensors: dict, meta: dict) -> dict[str, str]:
    """Map adapter layer -> module name in ``model``, or a KuosanError naming the first misfit."""
    where = {}
    rank = meta["rank"]
    for layer, info in meta["layers"].items():
        name = _resolve(model, layer)
        module = model.get_submodule(name) if name else None
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            raise KuosanError(f"the adapter targets layer {layer}, which this model does not have "
                              "(another architecture?)")
        if list(module.weight.shape) != list(info["shape"]):
            raise KuosanError(f"the adapter's layer {layer} has weight {info['shape']}, this model's is "
                              f"{list(module.weight.shape)} (another architecture?)")
        down, up = tensors[f"{layer}.down"], tensors[f"{layer}.up"]
        if down.shape[0] != rank or up.shape[1] != rank or up.shape[0] != module.weight.shape[0] or \
                down.shape[1] != module.weight.shape[1]:
            raise KuosanError(f"the adapter's tensors for {layer} have shapes {list(down.shape)} and "
                              f"{list(up.shape)}, which do not fit rank {rank} on this layer")
        where[layer] = name
    return where


@torch.no_grad()
def load_adapter(model: nn.Module, path, *, weight: float = 1.0, name: str | None = None,
                 check_base: bool = True) -> str:
    """Attach the adapter in ``path`` to ``model`` with mixing weight ``weight``; returns its name.

    With ``check_base`` (default) the model's weights must be the ones the adapter was trained on
    (same :func:`weights_checksum`); pass ``check_base=False`` to apply it to another model of the
    same architecture. Nothing is changed when the adapter does not fit.
    """
    tensors, meta = read_adapter(path)
    if any(layer.merged for layer in lora_layers(model).values()):
        raise KuosanError("this model has merged adapters; unmerge_lora(model) before loading another")
    if check_base:
        have = weights_checksum(model)
        if have != meta.get("base_sha256"):
            origin = meta.get("base", {}).get("path") if isinstance(meta.get("base"), dict) else None
            raise KuosanError(f"adapter {path} was trained on base weights {str(meta.get('base_sha256'))[:12]}…, "
                              f"this model's are {have[:12]}…: load it onto "
                              f"{origin or 'the checkpoint it was trained from'}, or pass check_base=False to "
                              "apply it to a model of the same architecture anyway")
    if meta.get("num_classes") is not None:
        _fit_classes(model, int(meta["num_classes"]))
    where = _check_fits(model, tensors, meta)
    replaced = {}
    for key in meta.get("replaces", []):
        pname = _resolve_param(model, key)
        if pname is None or model.get_parameter(pname).shape != tensors[f"full.{key}"].shape:
            raise KuosanError(f"the adapter replaces {key}, which this model does not have in that shape")
        replaced[pname] = tensors[f"full.{key}"]
    name = name or meta.get("name") or "default"
    existing = set(adapter_names(model))
    base, k = name, 2
    while name in existing:
        name, k = f"{base}-{k}", k + 1
    for layer, module_name in where.items():
        adapter = _attach(model, module_name, int(meta["rank"]), float(meta["alpha"]), name)
        adapter.down.weight.copy_(tensors[f"{layer}.down"])
        adapter.up.weight.copy_(tensors[f"{layer}.up"])
        adapter.mix = float(weight)
        adapter.requires_grad_(False)
    for pname, t in replaced.items():
        model.get_parameter(pname).copy_(t)
    return name


def _resolve_param(model: nn.Module, short: str) -> str | None:
    names = dict(model.named_parameters())
    for cand in (short, f"net.{short}"):
        if cand in names:
            return cand
    return None


def _fit_classes(model: nn.Module, num_classes: int) -> None:
    """Resize the class embedding the way fine-tuning did, when the adapter was trained with another
    class count (the base checksum above is that of the unresized base)."""
    resize_classes(model, num_classes)


def mix_adapters(model: nn.Module, items, *, check_base: bool = True) -> list[str]:
    """Load several adapters with weights: ``items`` is ``[(path, weight), ...]``; returns their names.
    The base check runs against the model as given (before any of them is attached)."""
    items = list(items)
    if check_base:
        for path, _ in items:  # check all first, so that nothing is attached when one does not fit
            _, meta = read_adapter(path)
            if meta.get("base_sha256") != weights_checksum(model):
                load_adapter(model, path)  # raises with the full message
    return [load_adapter(model, path, weight=w, check_base=False) for path, w in items]


# --- checkpoints of LoRA runs --------------------------------------------------------------------

def apply_lora_config(model: nn.Module, lora: dict) -> list[str]:
    """Rebuild the adapter structure recorded in a LoRA run's config.json (``{"rank", "alpha",
    "layers" or "targets", "name"}``) so that its checkpoint loads by name."""
    layers = lora.get("layers")
    if layers:
        names = []
        for short in layers:
            name = _resolve(model, short)
            if name is None:
                raise KuosanError(f"the checkpoint's LoRA config names layer {short}, which the network lacks")
            _attach(model, name, int(lora["rank"]), float(lora["alpha"]), lora.get("name", "default"))
            names.append(name)
        return names
    return add_lora(model, int(lora["rank"]), lora.get("alpha"), lora.get("targets") or "attn,conv",
                    lora.get("name", "default"))


def merge_state_dict(state: dict, scales: dict[str, float]) -> dict:
    """A state dict with its adapters folded into the base weights (W + scale · B A per adapter) and
    the adapter tensors removed: how a LoRA run's checkpoint becomes a plain parent for fine-tuning.
    ``scales``: adapter name -> α / r."""
    out = {k: v for k, v in state.items() if not is_adapter_key(k)}
    for key in state:
        if not (is_adapter_key(key) and key.endswith(".down.weight")):
            continue
        layer, _, rest = key.partition(".lora.")
        adapter = rest[:-len(".down.weight")]
        down = state[key].double()
        up = state[f"{layer}.lora.{adapter}.up.weight"].double().flatten(1)
        delta = (up @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:]) * scales.get(adapter, 1.0)
        base = out[f"{layer}.weight"]
        out[f"{layer}.weight"] = (base.double() + delta).to(base.dtype)
    return out
