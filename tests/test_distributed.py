"""Data parallelism: two CPU processes (gloo on the loopback) train as one process does at the same
global batch and seed, and sample the same images.

The two-process side runs through ``torchrun --standalone --nproc_per_node=2`` with this file as
the script: ``python -m torch.distributed.run --standalone --nproc_per_node=2 tests/test_distributed.py
worker OUT ARGS...`` trains with ``kuosan train ARGS`` and samples with ``generate_distributed``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kuosan.config import SampleConfig
from kuosan.runtime import shard_slice
from kuosan.training.distributed import accumulation_steps, micro_slices

# Uneven shards (25 = 12 + 13) cut into micro-batches of at most 5: rows, DDP and accumulation at once.
TRAIN_ARGS = ["--config", "digits-tiny", "--batch", "25", "--steps", "8", "--log_every", "2",
              "--checkpoint_every", "4", "--warmup_steps", "4", "--seed", "3", "--sample.steps", "2"]
SEEDS = list(range(7))  # split 3 + 4 over two processes
SAMPLE = {"sample": SampleConfig("heun", 3)}


def child_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo",
               MASTER_ADDR="127.0.0.1", PYTHONUNBUFFERED="1")
    env.pop("KUOSAN_PROGRESS", None)
    return env


def torchrun(nproc: int, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    output = proc.communicate(timeout=timeout)[0]
    assert proc.returncode == 0, output
    return output


def final_weights(run: Path) -> dict:
    from safetensors.torch import load_file

    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    return {name: load_file(ckpt / f"{name}.safetensors") for name in ("model", "ema")}


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_training(a: Path, b: Path, atol: float = 1e-4) -> None:
    # Gradients agree up to float summation order; Adam divides by sqrt(v), so for entries whose
    # gradient is ~0 that rounding can move a weight by a fraction of one step (lr = 2e-3): seen up to
    # 2e-5 after 8 steps. 1e-4 is 5% of a single step, far below any real divergence.
    ma, mb = metrics(a), metrics(b)
    assert [r["step"] for r in ma] == [r["step"] for r in mb]
    for ra, rb in zip(ma, mb):
        for key in ("loss", "grad_norm", "val_loss_raw", "val_loss_ema"):
            if key in ra:
                assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), (key, ra, rb)
    wa, wb = final_weights(a), final_weights(b)
    for name in wa:
        assert wa[name].keys() == wb[name].keys()  # unwrapped: no "module." prefix
        worst = max((wa[name][k] - wb[name][k]).abs().max().item() for k in wa[name])
        assert worst < atol, f"{name} weights differ by {worst}"


def sample_reference(run: Path) -> torch.Tensor:
    import kuosan
    from kuosan.sampling import generate

    pipe = kuosan.load(run, device="cpu")
    return generate(pipe.precond, shape=pipe.image_shape, seeds=SEEDS, class_labels=[s % 10 for s in SEEDS],
                    batch_size=64, **SAMPLE)


# --- pure helpers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("batch,world,per_device", [(25, 2, None), (25, 2, 5), (10, 3, 2), (3, 2, 1), (64, 8, 3)])
def test_shards_and_micro_batches_cover_the_global_batch_once(batch, world, per_device):
    rows = [r for rank in range(world) for s in micro_slices(batch, rank, world, per_device)
            for r in range(s.start, s.stop)]
    assert rows == list(range(batch))  # in order, each row once
    sizes = [s.stop - s.start for rank in range(world) for s in micro_slices(batch, rank, world, per_device)]
    assert min(sizes) >= 1 and (per_device is None or max(sizes) <= per_device)
    shard_sizes = [shard_slice(batch, r, world).stop - shard_slice(batch, r, world).start for r in range(world)]
    assert max(shard_sizes) - min(shard_sizes) <= 1
    passes = max(len(micro_slices(batch, r, world, per_device)) for r in range(world))
    assert passes == accumulation_steps(batch, world, per_device)


def test_gradient_accumulation_in_one_process_matches_one_pass(tmp_path):
    from kuosan.cli import main

    args = [*TRAIN_ARGS, "--steps", "4", "--checkpoint_every", "0", "--sample.steps", "1"]
    assert main(["train", *args, "--out", str(tmp_path / "plain")]) == 0
    assert main(["train", *args, "--batch_per_device", "7", "--out", str(tmp_path / "accumulated")]) == 0
    assert_same_training(tmp_path / "plain", tmp_path / "accumulated")


# --- two processes --------------------------------------------------------------------------------

def test_two_processes_train_and_sample_like_one(tmp_path):
    """2 ranks × micro-batches of ≤ 5 against one process taking the whole batch of 25 in one pass."""
    from kuosan.cli import main

    proc = torchrun(2, __file__, "worker", str(tmp_path / "two"), *TRAIN_ARGS, "--batch_per_device", "5")
    try:
        assert main(["train", *TRAIN_ARGS, "--out", str(tmp_path / "one")]) == 0  # meanwhile, in this process
        output = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert output.count("data: digits") == 1, output  # only rank 0 reports
    assert "2 processes (gloo)" in output and "3 forward/backward passes" in output
    assert_same_training(tmp_path / "one", tmp_path / "two" / "run")
    two = torch.load(tmp_path / "two" / "samples.pt", weights_only=True)
    one = sample_reference(tmp_path / "two" / "run")
    assert two.shape == one.shape == (len(SEEDS), 1, 8, 8)
    # The same images up to float sums in a batch of 3 or 4 rather than 7 (as at any batch size).
    torch.testing.assert_close(two, one, atol=1e-4, rtol=1e-4)
    from kuosan.images import to_uint8_nhwc

    assert abs(to_uint8_nhwc(two).astype(int) - to_uint8_nhwc(one).astype(int)).max() <= 1


def test_evaluate_under_two_processes_samples_like_one(tmp_path):
    """``torchrun ... -m kuosan evaluate --checkpoint``: the seeds are split, rank 0 writes one report."""
    import numpy as np

    from kuosan.cli import main

    run = tmp_path / "run"
    assert main(["train", *TRAIN_ARGS, "--steps", "2", "--checkpoint_every", "0", "--out", str(run)]) == 0
    common = ["evaluate", "--checkpoint", str(run), "--seeds", "0-6", "--steps", "3", "--extractors", "mnist-cnn",
              "--reference", "digits:test", "--max-real", "50", "--kid-subsets", "2", "--no-plots",
              "--train-reference", "none", "--device", "cpu"]
    output = finish(torchrun(2, "-m", "kuosan", *common, "--out", str(tmp_path / "two")))
    assert output.count("report:") == 1 and "2 processes" in output, output  # only rank 0 reports
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    two, one = (np.load(tmp_path / d / "samples.npz") for d in ("two", "one"))
    assert two["images"].shape == one["images"].shape == (7, 8, 8, 1)
    assert (two["labels"] == one["labels"]).all()
    assert np.abs(two["images"].astype(int) - one["images"].astype(int)).max() <= 1  # float sums per batch size
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["speed"]["generation"]["images"] == 7


@pytest.mark.slow
def test_resume_on_another_number_of_processes(tmp_path):
    """Half the run on 2 processes, the rest on 1 (and the other way round): the same run."""
    from kuosan.cli import main

    ref = tmp_path / "ref"
    assert main(["train", *TRAIN_ARGS, "--out", str(ref)]) == 0
    a, b = tmp_path / "a", tmp_path / "b"
    finish(torchrun(2, "-m", "kuosan", "train", *TRAIN_ARGS, "--steps", "4", "--out", str(a)))
    assert main(["train", *TRAIN_ARGS, "--resume", "--out", str(a)]) == 0
    assert main(["train", *TRAIN_ARGS, "--steps", "4", "--out", str(b)]) == 0
    output = finish(torchrun(2, "-m", "kuosan", "train", *TRAIN_ARGS, "--resume", "--out", str(b)))
    assert "from step 4" in output
    assert_same_training(ref, a)
    assert_same_training(ref, b)


@pytest.mark.slow
def test_two_process_resume_is_bit_exact_with_dropout(tmp_path):
    """Model dropout on: ranks draw their own masks, and a resume at 2 processes is still exact."""
    args = [*TRAIN_ARGS, "--model.dropout", "0.1", "--batch_per_device", "8"]
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    finish(torchrun(2, "-m", "kuosan", "train", *args, "--out", str(whole)))
    finish(torchrun(2, "-m", "kuosan", "train", *args, "--steps", "4", "--out", str(halves)))
    finish(torchrun(2, "-m", "kuosan", "train", *args, "--resume", "--out", str(halves)))
    wa, wb = final_weights(whole), final_weights(halves)
    for name in wa:
        assert all(torch.equal(wa[name][k], wb[name][k]) for k in wa[name]), name
    assert [{k: v for k, v in r.items() if k not in ("time", "images_per_s")} for r in metrics(whole)] == \
        [{k: v for k, v in r.items() if k not in ("time", "images_per_s")} for r in metrics(halves)]


@pytest.mark.slow
def test_time_limit_stops_every_rank_at_the_same_step(tmp_path):
    out = tmp_path / "run"
    output = finish(torchrun(2, "-m", "kuosan", "train", *TRAIN_ARGS, "--steps", "100000", "--time_limit", "3",
                             "--out", str(out)))
    assert "(time limit)" in output
    step = int((out / "checkpoints" / "latest").read_text().strip().split("-")[1])
    assert 0 < step < 100000


# --- the torchrun worker --------------------------------------------------------------------------

def _worker(out: Path, train_args: list[str]) -> None:
    import torch.distributed as dist

    import kuosan
    from kuosan.cli import main
    from kuosan.sampling import generate_distributed

    torch.set_num_threads(1)
    assert main(["train", *train_args, "--out", str(out / "run")]) == 0
    pipe = kuosan.load(out / "run", device="cpu")  # train() returns on every rank once the run is written
    x = generate_distributed(pipe.precond, shape=pipe.image_shape, seeds=SEEDS,
                             class_labels=[s % 10 for s in SEEDS], batch_size=64, **SAMPLE)
    if dist.get_rank() == 0:
        torch.save(x, out / "samples.pt")


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "worker":
    _worker(Path(sys.argv[2]), sys.argv[3:])
