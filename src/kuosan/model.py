"""From configs to a preconditioned network (a denoiser), and back from a checkpoint's config.json."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from kuosan.checkpoint import read_checkpoint
from kuosan.config import Config, DiffusionConfig
from kuosan.diffusion.precond import Precond, build_precond
from kuosan.errors import KuosanError
from kuosan.interop.diffusers import precond_from_config
from kuosan.nets.build import build_network, network_fields
from kuosan.nets.lora import apply_lora_config
from kuosan.records import RunConfig, TrainState

__all__ = ["network_spec", "build_model", "model_from_checkpoint_config", "expected_state", "read_model_checkpoint"]

# The network sees c_noise; for EDM that is ln(σ)/4 ∈ [-2, 1.1], for discrete models a timestep in
# [0, 1000). Scaling EDM's into a similar range lets the same sinusoidal embedding serve both.
_NOISE_SCALE = {"edm": 250.0, "flow": 1000.0}


def network_spec(cfg: Config, *, channels: int, resolution: int, num_classes: int) -> dict:
    """The network kind and constructor fields for a model on data of this shape."""
    m = cfg.model
    wanted = network_fields(m.kind)
    fields = {k: v for k, v in dataclasses.asdict(m).items() if k in wanted and k != "kind"}
    fields.update(in_channels=channels, out_channels=channels, resolution=resolution,
                  num_classes=num_classes)
    if "noise_scale" in wanted:
        fields["noise_scale"] = _NOISE_SCALE.get(cfg.diffusion.precond, 1.0)
    if "attn_resolutions" in fields:  # keep only sizes the network actually reaches
        sizes, r = set(), resolution
        for _ in m.channel_mults:
            sizes.add(r)
            r = (r + 1) // 2
        fields["attn_resolutions"] = tuple(a for a in fields["attn_resolutions"] if a in sizes)
    return {"kind": m.kind, "fields": fields}


def build_model(spec: dict, diffusion: DiffusionConfig | dict) -> Precond:
    """A freshly initialised network of ``spec`` wrapped by the preconditioner of ``diffusion``."""
    d = diffusion if isinstance(diffusion, dict) else dataclasses.asdict(diffusion)
    net = build_network(spec["kind"], **dict(spec["fields"]))
    return build_precond(d["precond"], net, sigma_data=d["sigma_data"], beta_schedule=d["beta_schedule"],
                         timesteps=d["timesteps"], sigma_min=d["sigma_min"], sigma_max=d["sigma_max"])


def model_from_checkpoint_config(config: RunConfig | dict) -> Precond:
    """The untrained model a checkpoint's config.json describes (its weights are loaded by the caller)."""
    record = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
    network = record.network.to_dict()
    try:
        if record.network.kind == "diffusers-unet2d":  # fine-tuned from a diffusers model
            precond = precond_from_config({"network": network})
        else:
            precond = build_model(network, record.diffusion)
    except KeyError as e:
        raise KuosanError(f"checkpoint config.json lacks {e}; is this a kuosan checkpoint?") from None
    if record.lora:  # a LoRA run: its checkpoints hold the adapters beside the base weights
        apply_lora_config(precond, record.lora)
    return precond


def expected_state(config: dict) -> dict[str, torch.Tensor] | None:
    """The state dict (names, shapes, dtypes; on the meta device: no memory, no initialisation) that the
    model ``config`` describes, or None where the config alone does not fix the tensors (LoRA runs add
    adapter tensors; autoencoders and other formats are checked by their own readers)."""
    if not isinstance(config, dict) or "network" not in config or "diffusion" not in config or config.get("lora"):
        return None
    try:
        with torch.device("meta"):
            return model_from_checkpoint_config(config).state_dict()
    except KuosanError:
        raise
    except Exception as e:  # noqa: BLE001 - a config.json with values no network accepts
        raise KuosanError(f"config.json describes no buildable model: {str(e).splitlines()[0] if str(e) else e!r}"
                          ) from None


def read_model_checkpoint(ckpt: str | Path, *, weights: str = "ema", training_state: bool = False) -> dict:
    """:func:`kuosan.checkpoint.read_checkpoint` with the weights checked against the architecture that
    the checkpoint's config.json describes, and the records typed: ``"record"`` (a
    :class:`~kuosan.records.RunConfig`) beside ``"config"`` (its JSON), and ``"state"`` a
    :class:`~kuosan.records.TrainState`."""
    ckpt = Path(ckpt)
    saved = read_checkpoint(ckpt, weights=weights, training_state=training_state, expected=expected_state)
    saved["record"] = RunConfig.from_dict(saved["config"], where=str(ckpt / "config.json"))
    if training_state:
        saved["state"] = TrainState.from_dict(saved["state"], where=str(ckpt / "state.json"))
    return saved
