"""Checkpoints: atomic writes, pruning, verification on load, and falling back past damage."""

import json
import os
import warnings

import pytest
import torch

from kuosan.config import config_to_dict, load_config
from kuosan.errors import KuosanError
from kuosan.model import build_model, network_spec
from kuosan import checkpoint as ck
from kuosan.checkpoint import encode_rng, list_checkpoints, resolve_checkpoint, save_checkpoint, verify_checkpoint
from kuosan.model import read_model_checkpoint

TINY = {"model.base_channels": 8, "model.channel_mults": [1], "model.num_blocks": 1, "model.attn_resolutions": []}


def tiny_model(base_channels=8):
    cfg = load_config(None, dict(TINY, **{"model.base_channels": base_channels}))
    spec = network_spec(cfg, channels=1, resolution=8, num_classes=0)
    torch.manual_seed(0)
    precond = build_model(spec, cfg.diffusion)
    config = {"format": "kuosan-checkpoint", "version": 1, "network": spec, **config_to_dict(cfg),
              "data": {"spec": "digits", "class_names": [], "resolution": 8, "channels": 1, "num_classes": 0}}
    return precond, config


def optimiser_after_one_step(precond):
    opt = torch.optim.AdamW(precond.parameters(), lr=1e-3)
    precond(torch.randn(2, 1, 8, 8), torch.ones(2)).square().mean().backward()
    opt.step()
    return opt


def save(run, step, precond, config, opt=None, keep=3):
    state = {"rng_torch": encode_rng(torch.get_rng_state()), "nonfinite": 0}
    return save_checkpoint(run, step, config=config, model=precond.state_dict(), ema=precond.state_dict(),
                           optimizer=opt, state=state, keep=keep)


@pytest.fixture
def run(tmp_path):
    """A run directory with checkpoints at steps 10, 20, 30."""
    precond, config = tiny_model()
    opt = optimiser_after_one_step(precond)
    for step in (10, 20, 30):
        save(tmp_path / "run", step, precond, config, opt)
    return tmp_path / "run"


def _resolve_warns(path, match):
    with pytest.warns(UserWarning, match=match):
        return resolve_checkpoint(path)


def test_round_trip_restores_weights_and_optimiser(tmp_path):
    precond, config = tiny_model()
    opt = optimiser_after_one_step(precond)
    ckpt = save(tmp_path, 5, precond, config, opt)
    saved = read_model_checkpoint(ckpt, training_state=True)
    for name, value in precond.state_dict().items():
        assert torch.equal(saved["model"][name], value) and torch.equal(saved["ema"][name], value)
    fresh = torch.optim.AdamW(build_model(config["network"], config["diffusion"]).parameters(), lr=1e-3)
    fresh.load_state_dict(saved["optimizer"])
    want, got = opt.state_dict(), fresh.state_dict()
    assert json.loads(json.dumps(want["param_groups"])) == got["param_groups"]
    for idx, state in want["state"].items():
        for key, value in state.items():
            assert torch.equal(got["state"][idx][key], value), (idx, key)
    assert saved["state"].step == 5 and saved["state"].nonfinite == 0


def test_save_is_atomic_keeps_the_last_n_and_moves_latest(tmp_path):
    precond, config = tiny_model()
    for step in (1, 2, 3, 4):
        save(tmp_path, step, precond, config, keep=2)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-0000003", "step-0000004"]
    assert (root / "latest").read_text() == "step-0000004\n"
    state = json.loads((root / "step-0000004" / "state.json").read_text())
    assert set(state["files"]) == {"config.json", "model.safetensors", "ema.safetensors"}
    assert verify_checkpoint(root / "step-0000004", require_state=True) is None


def test_every_file_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    precond, config = tiny_model()
    opt = optimiser_after_one_step(precond)
    synced, renames = [], []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (renames.append((str(a), str(b), len(synced))), real_replace(a, b)))
    save(tmp_path, 7, precond, config, opt)
    commit = next(r for r in renames if r[1].endswith("step-0000007"))
    before = synced[:commit[2]]
    for name in ("config.json", "model.safetensors", "ema.safetensors", "optimizer.safetensors", "state.json"):
        assert any(p.endswith(name) and ".tmp-step-0000007" in p for p in before), name
    assert renames[-1][1].endswith("latest")  # the pointer moves last


def test_steps_past_ten_million_sort_by_number(tmp_path):
    precond, config = tiny_model()
    save(tmp_path, 9_999_999, precond, config)
    save(tmp_path, 10_000_000, precond, config)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-9999999", "step-10000000"]
    assert resolve_checkpoint(tmp_path).name == "step-10000000"


def test_run_dir_checkpoints_folder_and_latest_file_all_resolve(run):
    newest = run / "checkpoints" / "step-0000030"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_checkpoint(run) == newest
        assert resolve_checkpoint(run / "checkpoints") == newest
        assert resolve_checkpoint(run / "checkpoints" / "latest") == newest
        assert resolve_checkpoint(newest) == newest


def _truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip_byte(p):
    data = bytearray(p.read_bytes())
    data[-10] ^= 0xFF
    p.write_bytes(bytes(data))


def _edit_state(p):
    state = json.loads(p.read_text())
    state["nonfinite"] = 5
    p.write_text(json.dumps(state))


DAMAGE = {  # what is done to the newest checkpoint -> words in the warning
    "truncated model": ("model.safetensors", _truncate, "model.safetensors has"),
    "bit flip in ema": ("ema.safetensors", _flip_byte, "ema.safetensors does not match"),
    "deleted optimizer": ("optimizer.safetensors", lambda p: p.unlink(), "optimizer.safetensors is missing"),
    "deleted model": ("model.safetensors", lambda p: p.unlink(), "model.safetensors is missing"),
    "garbage state": ("state.json", lambda p: p.write_bytes(b"\x00\xff garbage"), "state.json is unreadable"),
    "edited state": ("state.json", _edit_state, "state.json does not match"),
    "deleted state": ("state.json", lambda p: p.unlink(), "state.json is missing"),
    "edited config": ("config.json", lambda p: p.write_text(p.read_text().replace("8", "9")),
                      "config.json does not match"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_newest_falls_back_to_the_previous_with_a_warning(run, case):
    name, damage, words = DAMAGE[case]
    damage(run / "checkpoints" / "step-0000030" / name)
    with pytest.warns(UserWarning, match=f"skipping damaged checkpoint step-0000030: {words}"):
        got = resolve_checkpoint(run, require_state=True)
    assert got.name == "step-0000020"
    read_model_checkpoint(got, training_state=True)
    with pytest.raises(KuosanError, match="is damaged"):
        resolve_checkpoint(run / "checkpoints" / "step-0000030", require_state=True)


def test_garbage_latest_pointer_is_ignored_with_a_warning(run):
    (run / "checkpoints" / "latest").write_bytes(b"\xde\xad../../etc/passwd\n")
    assert _resolve_warns(run, "does not name a checkpoint").name == "step-0000030"


def test_leftover_tmp_dir_from_a_crash_mid_write_is_ignored_then_removed(run):
    tmp = run / "checkpoints" / ".tmp-step-0000040-12345"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"half a file")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_checkpoint(run).name == "step-0000030"
    precond, config = tiny_model()
    save(run, 40, precond, config)
    assert not tmp.exists()
    assert resolve_checkpoint(run).name == "step-0000040"


def test_crash_before_the_rename_keeps_the_previous_checkpoint(run, monkeypatch):
    precond, config = tiny_model()
    real_replace = os.replace

    def crash_on_commit(a, b):
        if str(b).endswith("step-0000040"):
            raise KeyboardInterrupt  # stands in for the process dying here
        return real_replace(a, b)

    monkeypatch.setattr(os, "replace", crash_on_commit)
    with pytest.raises(KeyboardInterrupt):
        save(run, 40, precond, config)
    monkeypatch.undo()
    assert resolve_checkpoint(run).name == "step-0000030"
    assert (run / "checkpoints" / "latest").read_text() == "step-0000030\n"


def test_crash_between_rename_and_pointer_uses_the_complete_newer_checkpoint(run, monkeypatch):
    precond, config = tiny_model()

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ck, "atomic_write_text", crash)
    with pytest.raises(KeyboardInterrupt):
        save(run, 40, precond, config)
    monkeypatch.undo()
    assert (run / "checkpoints" / "latest").read_text() == "step-0000030\n"
    assert resolve_checkpoint(run).name == "step-0000040"  # committed by its rename, and it verifies


def test_every_checkpoint_damaged_is_an_error(run):
    for ckpt in list_checkpoints(run):
        _truncate(ckpt / "model.safetensors")
    with pytest.warns(UserWarning), pytest.raises(KuosanError, match="every checkpoint in .* is damaged"):
        resolve_checkpoint(run)


def test_saving_an_earlier_step_replaces_the_abandoned_later_ones(run):
    _truncate(run / "checkpoints" / "step-0000030" / "model.safetensors")
    with pytest.warns(UserWarning):
        assert resolve_checkpoint(run).name == "step-0000020"
    precond, config = tiny_model()
    save(run, 25, precond, config)  # the resumed run moves on from step 20
    assert [p.name for p in list_checkpoints(run)] == ["step-0000010", "step-0000020", "step-0000025"]
    save(run, 25, precond, config)  # saving the same step again swaps it in place
    assert [p.name for p in list_checkpoints(run)] == ["step-0000010", "step-0000020", "step-0000025"]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_weights_of_another_architecture_are_named(tmp_path):
    precond, config = tiny_model(base_channels=8)
    other, _ = tiny_model(base_channels=16)
    ckpt = save(tmp_path, 1, precond, config)
    ck._write_safetensors(ckpt / "model.safetensors", other.state_dict())  # as an exported model: no state.json
    ck._write_safetensors(ckpt / "ema.safetensors", other.state_dict())
    (ckpt / "state.json").unlink()
    with pytest.raises(KuosanError, match=r"does not fit the architecture in config.json: "
                                          r"net.embed.mlp.0.weight is \[64, 16\] float32, the config needs \[32, 8\]"):
        read_model_checkpoint(resolve_checkpoint(ckpt))
    partial = {k: v for k, v in precond.state_dict().items() if "conv_out" not in k}
    ck._write_safetensors(ckpt / "ema.safetensors", partial)
    with pytest.raises(KuosanError, match="missing 2"):
        read_model_checkpoint(ckpt)
    ck._write_safetensors(ckpt / "ema.safetensors", {k: v.double() for k, v in precond.state_dict().items()})
    with pytest.raises(KuosanError, match="float64"):
        read_model_checkpoint(ckpt)


def test_missing_paths_and_empty_runs_are_one_line_errors(tmp_path):
    for path, words in ((tmp_path / "nope", "checkpoint not found"), (tmp_path, "no checkpoint in"),
                        ):
        with pytest.raises(KuosanError, match=words) as e:
            resolve_checkpoint(path)
        assert "\n" not in str(e.value)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(KuosanError, match="no checkpoint in"):
        resolve_checkpoint(tmp_path)
