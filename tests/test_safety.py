"""Loading never runs code from a file, and commands write only under the directory they were given."""

import contextlib
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

import kuosan
from kuosan.errors import KuosanError
from kuosan import checkpoint as ck
from kuosan.model import read_model_checkpoint

SRC = Path(kuosan.__file__).parent


class _Planted:
    """Unpickling this creates the marker file: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _malicious_pickle(marker) -> bytes:
    return pickle.dumps({"net.conv_in.weight": _Planted(marker)})


def test_the_planted_pickle_really_runs_code_when_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    pickle.loads(_malicious_pickle(marker))  # the control: plain unpickling does run it
    assert marker.exists()


def _checkpoint(tmp_path):
    from test_checkpoint import save, tiny_model

    precond, config = tiny_model()
    return save(tmp_path / "run", 1, precond, config)


def _rewrite_state(ckpt: Path) -> None:
    """Recompute state.json's checksums, as an attacker who forged the whole directory would."""
    state = json.loads((ckpt / "state.json").read_text())
    state["files"] = {p.name: {"size": p.stat().st_size, "sha256": ck.file_sha256(p)}
                      for p in sorted(ckpt.iterdir()) if p.name != "state.json"}
    state["sha256"] = ck._state_digest(state)
    (ckpt / "state.json").write_text(json.dumps(state))


@pytest.mark.parametrize("forged_checksums", [False, True])
@pytest.mark.parametrize("which", ["model.safetensors", "ema.safetensors"])
def test_a_pickle_named_safetensors_is_refused_and_runs_nothing(tmp_path, which, forged_checksums):
    ckpt = _checkpoint(tmp_path)
    marker = tmp_path / "pwned"
    (ckpt / which).write_bytes(_malicious_pickle(marker))
    if forged_checksums:
        _rewrite_state(ckpt)
    for path in (ckpt, ckpt.parent.parent):  # the checkpoint itself, and its run directory
        with pytest.warns(UserWarning) if path != ckpt and not forged_checksums else contextlib.nullcontext():
            with pytest.raises(KuosanError) as e:
                kuosan.load(path, use_ema=which == "ema.safetensors")
        assert "\n" not in str(e.value)
    with pytest.raises(KuosanError, match="not a readable safetensors file"):
        read_model_checkpoint(ckpt, training_state=True)
    assert not marker.exists()


def test_an_exported_pickle_checkpoint_is_refused_by_name(tmp_path):
    ckpt = _checkpoint(tmp_path)
    marker = tmp_path / "pwned"
    for name in ("model.safetensors", "ema.safetensors", "state.json"):
        (ckpt / name).unlink()
    (ckpt / "model.pt").write_bytes(_malicious_pickle(marker))
    (ckpt / "ema.pkl").write_bytes(_malicious_pickle(marker))
    with pytest.raises(KuosanError, match=r"holds ema.pkl, model.pt but no model.safetensors: .* never pickle"):
        kuosan.load(ckpt)
    assert not marker.exists()


def test_pickles_beside_a_good_checkpoint_are_never_opened(tmp_path):
    ckpt = _checkpoint(tmp_path)
    marker = tmp_path / "pwned"
    for name in ("model.pt", "optimizer.pkl", "ema.bin"):
        (ckpt / name).write_bytes(_malicious_pickle(marker))
    kuosan.load(ckpt.parent.parent)
    read_model_checkpoint(ckpt, training_state=True)
    assert not marker.exists()


def test_no_unsafe_deserialisation_anywhere_in_the_package():
    """torch.load only with weights_only=True; no pickle.load(s); numpy never with allow_pickle=True."""
    offenders = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.start():text.find("\n\n", m.start())]  # the call, up to its paragraph's end
            if "weights_only=True" not in call[:300]:
                offenders.append(f"{path.name}: {call[:60]}")
        for pattern in (r"pickle\.loads?\(", r"allow_pickle\s*=\s*True", r"\bdill\b", r"\bjoblib\.load"):
            offenders += [f"{path.name}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert not offenders


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*")} if root.exists() else {}


def test_train_and_sample_write_only_under_their_out(tmp_path):
    """Run from an unrelated working directory with HOME and TMPDIR of their own: afterwards
    nothing new exists outside --out (caches a library keeps in HOME aside)."""
    cwd, home, tmp = tmp_path / "cwd", tmp_path / "home", tmp_path / "tmp"
    for d in (cwd, home, tmp):
        d.mkdir()
    out, samples = tmp_path / "out" / "run", tmp_path / "samples"
    env = dict(os.environ, OMP_NUM_THREADS="1", HOME=str(home), TMPDIR=str(tmp),
               MPLCONFIGDIR=str(home / ".config" / "matplotlib"), XDG_CACHE_HOME=str(home / ".cache"))
    before = _snapshot(tmp_path)
    train = subprocess.run([sys.executable, "-m", "kuosan", "train", "--config", "digits-tiny", "--steps", "4",
                            "--checkpoint_every", "2", "--batch", "8", "--sample.steps", "2", "--out", str(out)],
                           cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr
    run_files = _snapshot(out)
    sample = subprocess.run([sys.executable, "-m", "kuosan", "sample", "--checkpoint", str(out), "--n", "3",
                             "--steps", "2", "--out", str(samples)],
                            cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert sample.returncode == 0, sample.stderr
    assert _snapshot(out) == run_files  # sampling leaves the run untouched
    after = _snapshot(tmp_path)
    new = sorted(set(after) - set(before))
    # Libraries' own caches: matplotlib's font list; torch makes an empty TMPDIR/torchinductor_USER
    # folder when torch.optim imports torch._dynamo.
    library_caches = ("home/.config/matplotlib", "home/.cache", "tmp/torchinductor_")
    stray = [p for p in new if not p.startswith(("out", "samples")) and not p.startswith(library_caches)
             and p not in ("home/.config", "home/.cache")]
    assert stray == [], stray
    assert not any(cwd.iterdir())
    assert not [p for p in tmp.rglob("*") if p.is_file()]
    assert {p.name for p in samples.iterdir()} == {"grid.png", "samples.npz", "seed000000.png",
                                                    "seed000001.png", "seed000002.png"}
