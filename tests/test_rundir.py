"""Run directories: one writer at a time (an OS lock that dies with its process), a resume that refuses a
changed recipe unless allowed and records it, and outputs kept out of checkpoint directories."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import kuosan
from kuosan.errors import KuosanError
from kuosan.rundir import (RunLock, changed_values, check_not_inside_checkpoint, check_resume, recipe_changes,
                           record_history)

_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(kuosan.__file__).parents[1]),
                                                     os.environ.get("PYTHONPATH", "")])}

# Holds the lock on argv[1] until a line arrives on stdin.
HOLDER = """
import sys
from kuosan.rundir import RunLock
lock = RunLock(sys.argv[1], command="train").acquire()
print("locked", flush=True)
sys.stdin.readline()
lock.release()
"""

# A stand-in for `kuosan train`: waits for the start signal, takes the run, writes config.json and a
# metrics log naming itself, then holds the run until told to finish; refused, it exits 2 like the CLI.
WRITER = """
import os, sys
from kuosan.errors import KuosanError
from kuosan.rundir import RunLock
run, me = sys.argv[1], sys.argv[2]
print("ready", flush=True)
sys.stdin.readline()
try:
    with RunLock(run, command="train"):
        with open(os.path.join(run, "config.json"), "w") as f:
            f.write(me)
        with open(os.path.join(run, "metrics.jsonl"), "a") as f:
            for i in range(20):
                f.write(f"{me} {i}\\n")
                f.flush()
        print("holding", flush=True)
        sys.stdin.readline()
        with open(os.path.join(run, "metrics.jsonl"), "a") as f:
            f.write(f"{me} end\\n")
except KuosanError as e:
    print(f"kuosan: error: {e}", file=sys.stderr)
    sys.exit(2)
"""


def _spawn(script, *args):
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_ENV)


def _holder(run):
    child = _spawn(HOLDER, run)
    assert child.stdout.readline().strip() == "locked", child.stderr.read()
    return child


def test_a_second_process_is_refused_with_the_holders_pid(tmp_path):
    run = tmp_path / "runs" / "fm"
    child = _holder(run)
    try:
        note = json.loads((run / ".lock").read_text())
        assert note["pid"] == child.pid and note["command"] == "train" and note["host"]
        with pytest.raises(KuosanError) as e:
            RunLock(run).acquire()
        msg = str(e.value)
        assert "\n" not in msg and f"pid {child.pid} on " in msg and "since " in msg
        assert msg.startswith(f"{run} is in use by another kuosan process") and "choose another --out" in msg
    finally:
        child.stdin.write("\n")
        child.stdin.close()
        assert child.wait(30) == 0
    assert not (run / ".lock").exists()  # let go cleanly: the lock file goes with it
    with RunLock(run) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()


def test_the_lock_dies_with_a_killed_process(tmp_path):
    run = tmp_path / "run"
    child = _holder(run)
    with pytest.raises(KuosanError, match=f"pid {child.pid}"):
        RunLock(run).acquire()
    child.kill()  # SIGKILL: no cleanup runs, the stale note stays in .lock
    child.wait(30)
    assert (run / ".lock").exists()
    with RunLock(run) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()


def test_lock_in_one_process_disabled_ranks_and_bad_paths(tmp_path):
    run = tmp_path / "a" / "b"
    with RunLock(run) as first:  # created if needed; a second lock in the same process is refused too
        assert run.is_dir() and first.path.is_file()
        with pytest.raises(KuosanError, match=f"pid {os.getpid()}"):
            RunLock(run).acquire()
        with RunLock(run, enabled=False):  # a torchrun rank other than 0: nothing to do
            pass
    RunLock(tmp_path / "rank1", enabled=False).acquire().release()
    assert not (tmp_path / "rank1").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(KuosanError, match="is a file"):
        RunLock(tmp_path / "file").acquire()


def _run_two_writers(run: Path) -> None:
    """Two writers started together on ``run``: exactly one succeeds, the other exits 2 with one line
    naming the winner, and every file in the run comes from the winner."""
    procs = {name: _spawn(WRITER, run, name) for name in ("A", "B")}
    for p in procs.values():
        assert p.stdout.readline().strip() == "ready"
    for p in procs.values():  # the start signal, to both at once
        p.stdin.write("go\n")
        p.stdin.flush()
    deadline = time.monotonic() + 60
    while all(p.poll() is None for p in procs.values()):
        assert time.monotonic() < deadline, "neither writer was refused"
        time.sleep(0.01)
    loser = next(name for name, p in procs.items() if p.poll() is not None)
    winner = "B" if loser == "A" else "A"
    w, lp = procs[winner], procs[loser]
    err = lp.stderr.read().strip()
    assert lp.returncode == 2 and lp.stdout.read() == "", err
    assert "\n" not in err and "is in use by another kuosan process" in err and f"pid {w.pid} " in err, err
    assert w.stdout.readline().strip() == "holding"
    w.stdin.write("finish\n")
    w.stdin.close()
    assert w.wait(30) == 0, w.stderr.read()
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.jsonl"]
    assert (run / "config.json").read_text() == winner
    assert (run / "metrics.jsonl").read_text().splitlines() == [f"{winner} {i}" for i in range(20)] + [
        f"{winner} end"]
    for p in procs.values():
        p.stdout.close()
        p.stderr.close()


def test_two_writers_on_one_run_exactly_one_wins(tmp_path):
    _run_two_writers(tmp_path / "run")


@pytest.mark.slow
def test_two_writers_on_one_run_exactly_one_wins_20_times(tmp_path):
    for i in range(20):
        _run_two_writers(tmp_path / f"run{i}")


SAVED = {"format": "kuosan-checkpoint", "model": {"base_channels": 64, "channel_mults": [1, 2, 2]},
         "diffusion": {"precond": "edm"}, "sample": {"steps": 18, "sampler": "heun"},
         "train": {"lr": 0.002, "batch": 64, "steps": 1000, "out": "runs/a", "device": "cpu", "log_every": 50,
                   "sample_every": 2000, "checkpoint_every": 1000, "keep_checkpoints": 3, "time_limit": None,
                   "max_nonfinite": 20, "compile": False, "seed": 0, "betas": [0.9, 0.99]},
         "network": {"kind": "unet", "fields": {"num_classes": 10}}, "data": {"spec": "digits"}}


def _now(**train):
    now = json.loads(json.dumps(SAVED))
    now["train"].update(train)
    return now


def test_recipe_changes_finds_changed_keys_and_ignores_the_allowed_ones():
    assert recipe_changes(SAVED, SAVED) == []
    allowed = _now(steps=5000, out="runs/b", device="cuda", log_every=10, sample_every=0, checkpoint_every=5,
                   keep_checkpoints=1, time_limit=3600.0, max_nonfinite=5, compile=True, betas=(0.9, 0.99))
    allowed["sample"] = {"steps": 50, "sampler": "dpm2m"}
    assert recipe_changes(SAVED, allowed) == []
    changed = _now(lr=0.001, batch=32, seed=1)
    changed["model"]["channel_mults"] = (1, 2)
    changed["data"]["spec"] = "mnist"
    changed["train"]["ema_decay"] = 0.99  # on one side only
    assert recipe_changes(SAVED, changed) == ["data.spec", "model.channel_mults", "train.batch", "train.ema_decay",
                                              "train.lr", "train.seed"]
    assert recipe_changes(SAVED, changed, ignore=("train.*", "model")) == ["data.spec"]
    assert changed_values(SAVED, changed, ["train.lr", "train.ema_decay"]) == {
        "train.lr": {"old": 0.002, "new": 0.001}, "train.ema_decay": {"old": "(absent)", "new": 0.99}}


def test_check_resume_refuses_a_changed_recipe_unless_allowed_and_history_records_it(tmp_path):
    now = _now(lr=0.001, batch=32, steps=4000)
    with pytest.raises(KuosanError) as e:
        check_resume(SAVED, now, allow_changes=False, where="runs/fm")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("cannot resume runs/fm with a changed recipe")
    assert "train.batch 64 -> 32" in msg and "train.lr 0.002 -> 0.001" in msg and "steps" not in msg
    assert "--allow-changes" in msg and "history.jsonl" in msg
    assert check_resume(SAVED, _now(steps=4000), allow_changes=False) == []
    keys = check_resume(SAVED, now, allow_changes=True)
    assert keys == ["train.batch", "train.lr"]
    record_history(tmp_path, {"event": "resume", "step": 1000})
    record_history(tmp_path, {"event": "changed", "changed": changed_values(SAVED, now, keys)})
    lines = [json.loads(x) for x in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [x["event"] for x in lines] == ["resume", "changed"]
    assert lines[1]["changed"]["train.lr"] == {"old": 0.002, "new": 0.001}
    assert lines[1]["pid"] == os.getpid() and lines[1]["time"].endswith("Z")


def test_outputs_are_kept_out_of_checkpoint_directories(tmp_path):
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "step-0000010"
    ckpt.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (ckpt / name).write_text("{}")
    (run / "config.json").write_text("{}")
    for bad in (ckpt, ckpt / "samples", run / "checkpoints", run / "checkpoints" / "new"):
        with pytest.raises(KuosanError, match="checkpoint") as e:
            check_not_inside_checkpoint(bad)
        assert "\n" not in str(e.value) and str(e.value).startswith(f"--out {bad} is ")
    with pytest.raises(KuosanError, match="^--samples"):
        check_not_inside_checkpoint(ckpt, what="--samples")
    (tmp_path / "link").symlink_to(ckpt)
    with pytest.raises(KuosanError, match="checkpoint"):
        check_not_inside_checkpoint(tmp_path / "link" / "grid")
    exported = tmp_path / "exported"  # a checkpoint directory on its own, outside any run
    exported.mkdir()
    for name in ("config.json", "model.safetensors"):
        (exported / name).write_text("{}")
    with pytest.raises(KuosanError, match="inside the checkpoint directory"):
        check_not_inside_checkpoint(exported / "out")
    for good in (tmp_path / "fresh", run, run / "samples", tmp_path / "checkpoints" / "mine"):
        check_not_inside_checkpoint(good)


# --- the autoencoder trainer uses all of it --------------------------------------------------------

def _tiny_ae(tmp_path, **kw):
    from kuosan.training.autoencoder import AutoencoderTrainConfig

    opts = dict(data="digits", max_images=256, latent_channels=2, downsample=2, base_channels=8, perceptual="none",
                steps=3, batch=16, warmup_steps=2, log_every=3, checkpoint_every=3, scale_images=64,
                out=str(tmp_path / "ae"), device="cpu")
    return AutoencoderTrainConfig(**{**opts, **kw})


def test_autoencoder_training_refuses_a_locked_run_and_a_checkpoint_out(tmp_path):
    from kuosan.training.autoencoder import train_autoencoder

    run = tmp_path / "ae"
    child = _holder(run)
    try:
        with pytest.raises(KuosanError, match=f"in use by another kuosan process \\(pid {child.pid} "):
            train_autoencoder(_tiny_ae(tmp_path), log=lambda *a: None)
        assert [p.name for p in run.iterdir()] == [".lock"]  # nothing written beside the holder's lock
    finally:
        child.stdin.write("\n")
        child.stdin.close()
        child.wait(30)
    ckpt = tmp_path / "other" / "checkpoints" / "step-0000001"
    ckpt.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (ckpt / name).write_text("{}")
    with pytest.raises(KuosanError, match="inside the checkpoint directory"):
        train_autoencoder(_tiny_ae(tmp_path, out=str(ckpt / "ae")), log=lambda *a: None)
    assert not (ckpt / "ae").exists()


def test_autoencoder_resume_refuses_a_changed_recipe_unless_allowed(tmp_path):
    from kuosan.training.autoencoder import train_autoencoder

    quiet = lambda *a: None  # noqa: E731
    out = train_autoencoder(_tiny_ae(tmp_path), log=quiet)
    with pytest.raises(KuosanError, match=r"changed recipe \(train.batch 16 -> 8, train.lr 0.0005 -> 0.001\)"):
        train_autoencoder(_tiny_ae(tmp_path, steps=6, lr=1e-3, batch=8), resume=True, log=quiet)
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-0000003"
    train_autoencoder(_tiny_ae(tmp_path, steps=6, lr=1e-3, batch=8, log_every=1), resume=True, allow_changes=True,
                      log=quiet)
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-0000006"
    train_autoencoder(_tiny_ae(tmp_path, steps=9, lr=1e-3, batch=8), resume=True, log=quiet)  # only longer
    events = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "resume", "changed", "resume"]
    assert events[2]["changed"] == {"train.batch": {"old": 16, "new": 8}, "train.lr": {"old": 0.0005, "new": 0.001}}
    assert events[1]["step"] == 3 and events[3]["step"] == 6
    assert not (out / ".lock").exists()


def test_settings_added_later_resume_runs_that_never_had_them():
    from kuosan.rundir import ADDED_DEFAULTS, recipe_changes

    old = {"train": {"lr": 1e-3}}
    assert recipe_changes(old, {"train": {"lr": 1e-3, "decay_over": "steps", "ema_sigma_rel": None}}) == []
    assert recipe_changes(old, {"train": {"lr": 1e-3, "decay_over": "time"}}) == ["train.decay_over"]
    assert recipe_changes({"train": {"lr": 1e-3, "decay_over": "time"}}, old) == ["train.decay_over"]
    assert ADDED_DEFAULTS["train.decay_over"] == "steps"
