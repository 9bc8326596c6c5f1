"""``kuosan distill``: the student is an ordinary checkpoint that records its teacher and starts from its
weights, samples through kuosan's doors, resumes bit-exact (stopped, or killed with SIGKILL), and refuses
what it cannot tune with one line."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import kuosan
from kuosan.checkpoint import file_sha256, save_checkpoint
from kuosan.cli import main
from kuosan.config import config_to_dict, load_config, resolve_config_path
from kuosan.diffusion.precond import ConsistencyPrecond
from kuosan.errors import KuosanError
from kuosan.model import build_model, network_spec
from kuosan.training.distill import ConsistencyConfig, DistillRun, distill, prepare_student
from kuosan.training.distributed import init_distributed

# Every source of state is live: dropout (global RNG, one mask for both calls), label dropout and noise (the
# noise generator), EMA and lr warm-up, stages of the mapping (every 2 steps), a metrics window straddling
# checkpoints. A constant learning rate after the warm-up: a run stopped by a smaller --steps then has the
# uninterrupted run's schedule (a decay's depends on --steps).
ARGS = ["--steps", "6", "--batch", "8", "--checkpoint-every", "2", "--log-every", "3", "--warmup-steps", "2",
        "--stage-steps", "2", "--dropout", "0.1", "--seed", "3", "--keep-checkpoints", "5", "--lr-decay", "constant"]


def _save_teacher(path, precond_kind="edm"):
    """A digits-tiny model with random weights, saved as a training run would save it."""
    cfg = load_config(None, {"diffusion.precond": precond_kind}, base=resolve_config_path("digits-tiny"))
    spec = network_spec(cfg, channels=1, resolution=8, num_classes=10)
    torch.manual_seed(0)
    model = build_model(spec, cfg.diffusion)
    config = {"format": "kuosan-checkpoint", "version": 1, "network": spec, **config_to_dict(cfg),
              "data": {"spec": "digits", "class_names": [str(k) for k in range(10)], "resolution": 8,
                       "channels": 1, "num_classes": 10}}
    state = model.state_dict()
    save_checkpoint(path, 100, config=json.loads(json.dumps(config)), model=state, ema=state)
    return path, state


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return _save_teacher(tmp_path_factory.mktemp("teacher") / "run")


@pytest.fixture(scope="module")
def student_dir(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("student") / "run"
    assert main(["distill", "--teacher", str(teacher[0]), "--out", str(out), *ARGS]) == 0
    return out


def _files(ckpt):
    return {name: file_sha256(ckpt / name) for name in ("model.safetensors", "ema.safetensors",
                                                        "optimizer.safetensors")}


def _metrics(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time", "images_per_s")} for r in rows]


def test_student_is_an_ordinary_checkpoint_that_records_its_teacher(teacher, student_dir):
    ckpt = student_dir / "checkpoints" / "step-0000006"
    config = json.loads((ckpt / "config.json").read_text())
    assert config["diffusion"]["precond"] == "consistency"
    assert (config["diffusion"]["p_mean"], config["diffusion"]["p_std"]) == (-1.1, 2.0)
    assert config["sample"]["sampler"] == "consistency" and config["sample"]["steps"] == 2
    t = config["teacher"]
    teacher_ckpt = teacher[0] / "checkpoints" / "step-0000100"
    assert t["path"] == str(teacher_ckpt.resolve()) and t["weights"] == "ema.safetensors"
    assert t["sha256"] == file_sha256(teacher_ckpt / "ema.safetensors") and t["precond"] == "edm"
    assert config["consistency"]["method"] == "ect" and config["consistency"]["stage_steps"] == 2
    assert config["network"]["fields"]["dropout"] == 0.1
    rows = _metrics(student_dir)
    assert [r["step"] for r in rows] == [3, 6] and [r["stage"] for r in rows] == [1, 2]
    pipe = kuosan.load(student_dir)
    assert isinstance(pipe.precond, ConsistencyPrecond)
    two, one = pipe.sample("0-3"), pipe.sample("0-3", steps=1)
    assert two.nfe == 2 and one.nfe == 1 and two.images.shape == (4, 8, 8, 1)
    assert pipe.sample("0-3", guidance=2.0).images.shape == (4, 8, 8, 1)  # tuned with label dropout


def test_sample_command_uses_the_students_defaults(student_dir, tmp_path, capsys):
    assert main(["sample", "--checkpoint", str(student_dir), "--n", "4", "--out", str(tmp_path / "s")]) == 0
    assert "2 network evaluations each" in capsys.readouterr().out
    assert (tmp_path / "s" / "grid.png").is_file()


def test_evaluate_samples_with_the_students_own_sampler(student_dir, tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(student_dir), "--n", "8", "--reference", "digits:test",
                 "--extractors", "efficientnet-lite0", "--train-reference", "none", "--out", str(tmp_path / "e")]) == 0
    err = capsys.readouterr().err
    assert "(consistency, 2 steps)" in err  # the checkpoint's sample section, not the library's heun default
    assert main(["evaluate", "--checkpoint", str(student_dir), "--n", "8", "--steps", "1", "--reference",
                 "digits:test", "--extractors", "efficientnet-lite0", "--train-reference", "none", "--out",
                 str(tmp_path / "e1")]) == 0
    assert "(consistency, 1 steps)" in capsys.readouterr().err


def test_student_starts_from_the_teachers_weights(teacher, tmp_path):
    student = prepare_student(ConsistencyConfig(), {"out": str(tmp_path / "s"), "batch": 8}, teacher=str(teacher[0]))
    run = DistillRun(student, init_distributed(torch.device("cpu")), resume=False, log=lambda *a: None)
    state = run.precond.state_dict()
    assert state.keys() == teacher[1].keys()
    assert all(torch.equal(state[k], teacher[1][k]) for k in state)


def test_stopped_run_resumes_bit_exact(teacher, student_dir, tmp_path):
    out = tmp_path / "run"
    common = ["distill", "--teacher", str(teacher[0]), "--out", str(out), *ARGS]
    assert main([*common[:-len(ARGS)], *ARGS[2:], "--steps", "4"]) == 0
    assert main([*common, "--resume"]) == 0
    assert _files(out / "checkpoints" / "step-0000006") == _files(student_dir / "checkpoints" / "step-0000006")
    stopped, straight = _metrics(out), _metrics(student_dir)  # the stop at step 4 logged a line of its own
    assert [r["step"] for r in stopped] == [3, 4, 6] and stopped[0] == straight[0]
    assert {k: stopped[-1][k] for k in ("val_loss_raw", "val_loss_ema", "grad_norm", "stage")} == \
        {k: straight[-1][k] for k in ("val_loss_raw", "val_loss_ema", "grad_norm", "stage")}


def test_resume_refuses_a_changed_recipe(teacher, student_dir, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(student_dir, out)
    student = prepare_student(ConsistencyConfig(q=4.0, stage_steps=2, dropout=0.1),
                              {"out": str(out), "steps": 8, "batch": 8, "seed": 3, "warmup_steps": 2,
                               "lr_decay": "constant"}, teacher=str(teacher[0]))
    with pytest.raises(KuosanError, match="consistency.q 2.0 -> 4.0"):
        distill(student, resume=True, progress=False, log=lambda *a: None)


def test_consistency_training_from_scratch(tmp_path):
    out = tmp_path / "ct"
    assert main(["distill", "--method", "ct", "--config", "digits-tiny", "--out", str(out), "--steps", "2",
                 "--batch", "8", "--checkpoint-every", "0"]) == 0
    config = json.loads((out / "checkpoints" / "step-0000002" / "config.json").read_text())
    assert "teacher" not in config and config["consistency"]["method"] == "ct"
    assert config["diffusion"]["precond"] == "consistency"
    assert config["network"]["fields"]["noise_scale"] == 250.0  # EDM's embedding scale, as its base


def test_flow_teacher_gives_a_flow_student(tmp_path):
    path, _ = _save_teacher(tmp_path / "flow", "flow")
    student = prepare_student(ConsistencyConfig(), {"out": str(tmp_path / "s")}, teacher=str(path))
    assert student.cfg.diffusion.precond == "consistency-flow"


@pytest.mark.parametrize("args,message", [
    (["--out", "X"], "give --teacher"),
    (["--method", "ct", "--teacher", "T", "--out", "X"], "give --config"),
    (["--teacher", "T", "--out", "X", "--q", "1"], "--q must be above 1"),
    (["--teacher", "STUDENT", "--out", "X"], "consistency model already"),
])
def test_refusals_are_one_line(teacher, student_dir, tmp_path, capsys, args, message):
    args = [str(teacher[0]) if a == "T" else str(student_dir) if a == "STUDENT" else str(tmp_path / "o")
            if a == "X" else a for a in args]
    assert main(["distill", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_killed_run_resumes_bit_exact(teacher, student_dir, tmp_path):
    """SIGKILL at a moment after the first checkpoint, then --resume: the same files as the uninterrupted run."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "kuosan", "distill", "--teacher", str(teacher[0]), "--out", str(out), *ARGS]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step-0000002").is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert killed, "the run finished before it could be killed"
    assert _files(out / "checkpoints" / "step-0000006") == _files(student_dir / "checkpoints" / "step-0000006")
    assert _metrics(out) == _metrics(student_dir)


def test_a_distillation_refuses_posthoc_ema(teacher, tmp_path):
    """The Python API can ask for ``train.posthoc_ema``; the student's loop keeps one EMA and says so."""
    student = prepare_student(ConsistencyConfig(stage_steps=2), {"out": str(tmp_path / "s"), "steps": 2, "batch": 8,
                                                                 "posthoc_ema": True}, teacher=str(teacher[0]))
    with pytest.raises(KuosanError, match="posthoc_ema is for kuosan train"):
        distill(student, progress=False, log=lambda *a: None)
