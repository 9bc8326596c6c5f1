"""Exact resume: a training process killed with SIGKILL at random moments and continued with
``--resume`` ends bit for bit where an uninterrupted run with the same seed ends (CPU).

Compared at the final step: raw weights, EMA weights, optimiser state (files' SHA-256), the RNG
states, data position, non-finite count, the metrics log (without its wall-clock fields) and the
final sample grid. ``python tests/test_resume.py --kills 10`` runs the harness by hand.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Small and quick, but every source of state is live: dropout (global torch RNG), label dropout and
# noise (the noise generator), EMA warm-up, lr warm-up then cosine decay, a metrics window (5) that
# straddles checkpoints (every 3), and pruning (keep 2).
TRAIN_ARGS = ["--config", "digits-tiny", "--batch", "16", "--checkpoint_every", "3", "--log_every", "5",
              "--warmup_steps", "6", "--model.dropout", "0.1", "--keep_checkpoints", "2", "--seed", "7",
              "--sample.steps", "4"]
WALL_CLOCK = ("time", "images_per_s")


def child_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("KUOSAN_PROGRESS", None)
    return env


def train_command(out: Path, steps: int, resume: bool = False, extra=()) -> list[str]:
    return [sys.executable, "-m", "kuosan", "train", *TRAIN_ARGS, "--steps", str(steps), "--out", str(out),
            *(["--resume"] if resume else []), *extra]


def run_training(out: Path, steps: int, resume: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(out, steps, resume), env=child_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=out.parent)


@dataclass
class KillReport:
    kills: list[dict] = field(default_factory=list)    # {"delay", "phase", "checkpoint_before", "after"}
    resumes: int = 0
    outputs: list[str] = field(default_factory=list)


def _phase(out: Path, started_training: bool) -> str:
    """Where a kill landed, judged from what it left behind."""
    root = out / "checkpoints"
    if root.is_dir() and any(p.name.startswith((".tmp-", ".old-", ".latest.tmp")) for p in root.iterdir()):
        return "checkpoint write"
    return "training" if started_training else "start-up"


def _latest_step(out: Path) -> int:
    from kuosan.checkpoint import list_checkpoints

    ckpts = list_checkpoints(out)
    return int(ckpts[-1].name.split("-")[1]) if ckpts else 0


def _wait_for_checkpoint(out: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> bool:
    """Poll until a checkpoint of at least ``step`` is committed (False if the process ended first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _latest_step(out) >= step:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    raise AssertionError(f"no checkpoint {step} after {timeout} s")


def _wait_for_write(out: Path, proc: subprocess.Popen, timeout: float = 120) -> bool:
    """Poll (every ~0.5 ms) until a checkpoint is being written; False if none was seen in time."""
    root = out / "checkpoints"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if any(name.startswith(".tmp-step-") for name in os.listdir(root)):
                return True
        except FileNotFoundError:
            pass
        time.sleep(0.0005)
    return False


def run_with_kills(out: Path, steps: int, kills: int, seed: int, jitter: float = 0.25, every: int = 3,
                   modes=("start-up", "training", "training", "write", "write")) -> KillReport:
    """Train to ``steps`` via the CLI, SIGKILLing the process ``kills`` times, then a final
    ``--resume`` to the end. Each kill's mode is drawn from ``modes`` (cycled in order when there are
    as many kills as modes or fewer): "start-up", a random moment of the first 2.5 s (imports, data,
    model); "training", a random 0..``jitter`` s after the run passes a random step a little beyond
    where it resumed (in a step, a metrics write or a checkpoint write); "write", a random 0..5 ms
    after a checkpoint's temporary directory appears."""
    rng = random.Random(seed)
    report = KillReport()
    attempt = 0
    while len(report.kills) < kills:
        attempt += 1
        if attempt > 2 * kills:
            raise AssertionError(f"could not land {kills} kills: {report.kills}")
        before = _latest_step(out)
        proc = subprocess.Popen(train_command(out, steps, resume=attempt > 1), env=child_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=out.parent)
        started, lines = threading.Event(), []

        def reader(p=proc, lines=lines, started=started):
            for line in p.stdout:
                lines.append(line)
                if line.startswith("data: "):
                    started.set()

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        t0 = time.monotonic()
        mode = modes[len(report.kills)] if kills <= len(modes) else rng.choice(modes)
        if mode == "start-up":
            time.sleep(rng.uniform(0.0, 2.5))
        elif mode == "write" and _wait_for_checkpoint(out, before + 1, proc) and _wait_for_write(out, proc):
            time.sleep(rng.uniform(0.0, 0.005))
        else:
            target = min(before + rng.randint(1, 2 * every + 2), steps - 20)
            _wait_for_checkpoint(out, target, proc)
            time.sleep(rng.uniform(0.0, jitter))
        delay = time.monotonic() - t0
        alive = proc.poll() is None
        if alive:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        thread.join(10)
        report.outputs.append("".join(lines))
        if not alive:
            raise AssertionError(f"training ended (exit {proc.returncode}) before the kill:\n" + "".join(lines))
        if attempt > 1 and started.is_set() and not any(
                ln.startswith(("resuming ", "--resume: no checkpoint")) for ln in lines):
            raise AssertionError("--resume did not resume:\n" + "".join(lines))
        report.kills.append({"delay": round(delay, 2), "phase": _phase(out, started.is_set()),
                             "checkpoint_before": before, "checkpoint_after": _latest_step(out)})
    final = run_training(out, steps, resume=True)
    report.resumes = attempt
    report.outputs.append(final.stdout + final.stderr)
    if final.returncode != 0:
        raise AssertionError(f"final --resume failed (exit {final.returncode}):\n{final.stdout}{final.stderr}")
    return report


def final_state(out: Path, steps: int) -> dict:
    """Everything that must match between two runs, read from the final checkpoint and the log."""
    ckpt = out / "checkpoints" / f"step-{steps:07d}"
    state = json.loads((ckpt / "state.json").read_text())
    metrics = [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK}
               for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"files": {k: v for k, v in state["files"].items() if k != "config.json"},   # config names --out
            "state": {k: state[k] for k in ("step", "rng_noise", "rng_torch", "data_position", "nonfinite",
                                            "window_loss", "window_n", "optimizer_param_groups")},
            "metrics": metrics,
            "samples.png": (out / "samples.png").read_bytes()}


def assert_same_run(a: Path, b: Path, steps: int) -> None:
    sa, sb = final_state(a, steps), final_state(b, steps)
    for key in ("files", "state", "metrics"):
        if key == "metrics":
            assert len(sa[key]) == len(sb[key]), "metrics logs differ in length"
            for ra, rb in zip(sa[key], sb[key]):
                assert ra == rb, f"metrics differ at step {ra.get('step')}: {ra} != {rb}"
        else:
            for k in sa[key]:
                assert sa[key][k] == sb[key][k], f"{key}/{k} differs after resuming"
    assert sa["samples.png"] == sb["samples.png"], "final sample grids differ"


FAST_STEPS = 36


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted run of FAST_STEPS, started once and run beside the tests that need it."""
    ref = tmp_path_factory.mktemp("reference")
    proc = subprocess.Popen(train_command(ref / "run", FAST_STEPS), env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ref)
    done = []

    def wait() -> Path:
        if not done:
            output = proc.communicate(timeout=600)[0]
            assert proc.returncode == 0, output
            done.append(ref / "run")
        return done[0]

    yield wait
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _check_kill_run(tmp_path: Path, steps: int, kills: int, seed: int, reference=None) -> KillReport:
    """Kill-and-resume a run; compare it with ``reference()`` or with a fresh uninterrupted run."""
    if reference is None:
        ref_dir = tmp_path / "reference"
        ref_dir.mkdir()
        ref_proc = subprocess.Popen(train_command(ref_dir / "run", steps), env=child_env(),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ref_dir)

        def reference():
            output = ref_proc.communicate(timeout=600)[0]
            assert ref_proc.returncode == 0, output
            return ref_dir / "run"
    killed_dir = tmp_path / "killed"
    killed_dir.mkdir()
    modes = ("training", "write") if kills <= 2 else ("start-up", "training", "training", "write", "write")
    report = run_with_kills(killed_dir / "run", steps, kills, seed, modes=modes)
    assert len(report.kills) == kills, report.kills
    assert_same_run(reference(), killed_dir / "run", steps)
    assert any(k["checkpoint_after"] > 0 for k in report.kills), "no kill came after a checkpoint"
    return report


def test_two_kills_resume_bit_exact(tmp_path, reference_run):
    _check_kill_run(tmp_path, FAST_STEPS, kills=2, seed=1, reference=reference_run)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12])
def test_many_kills_resume_bit_exact(tmp_path, seed):
    report = _check_kill_run(tmp_path, steps=90, kills=12, seed=seed)
    print(json.dumps(report.kills))


def sigterm_then_resume(out: Path, steps: int, after: float = 0.3) -> tuple[int, str]:
    """SIGTERM a training run ``after`` s into training, then --resume it; (stopped step, output)."""
    proc = subprocess.Popen(train_command(out, steps), env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=out.parent)
    for line in proc.stdout:
        if line.startswith("data: "):
            break
    time.sleep(after)
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, rest
    assert "(SIGTERM)" in rest, rest
    stopped_at = _latest_step(out)
    done = run_training(out, steps, resume=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"from step {stopped_at}" in done.stdout
    return stopped_at, rest


@pytest.mark.slow
def test_sigterm_checkpoints_at_the_current_step_and_resumes_exactly(tmp_path, reference_run):
    """SIGTERM (a scheduler's polite stop) writes a checkpoint at the current step, usually off the
    checkpoint grid, with the metrics window half full; resuming from it is still exact."""
    out = tmp_path / "stopped" / "run"
    out.parent.mkdir()
    stopped_at, _ = sigterm_then_resume(out, FAST_STEPS)
    assert 0 < stopped_at < FAST_STEPS
    assert_same_run(reference_run(), out, FAST_STEPS)


if __name__ == "__main__":
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--steps", type=int, default=90)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        rep = _check_kill_run(Path(d), a.steps, a.kills, a.seed)
        print(json.dumps(rep.kills, indent=1))
        print(f"{len(rep.kills)} kills, {rep.resumes} resumes: final state identical to the uninterrupted run")
