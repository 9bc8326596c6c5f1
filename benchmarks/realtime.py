"""Real time: a consistency-tuned student (ECT) against its teacher's samplers on Fashion-MNIST (``--set emoji``:
the colour set's latent model from ``kuosan demo --data emoji``, features of the shipped emoji-cnn, results in
``realtime_emoji.json``).

    .venv/bin/python benchmarks/realtime.py                    # the benchmark (well under 35 CPU-minutes)
    .venv/bin/python benchmarks/realtime.py --smoke --n 64 --repeats 1 --student /tmp/s --out-json /tmp/rt.json
    .venv/bin/python benchmarks/realtime.py --set emoji --tune-seconds 420   # after `make demo-emoji`

1. Teacher: ``kuosan train --config demo --time_limit 600 --out runs/bench/realtime-teacher``, once (kept when
   it exists; its wall and CPU seconds are kept beside it in ``realtime-teacher.cost.json``).
2. Student: ``kuosan distill --teacher runs/bench/realtime-teacher`` with at most the teacher's compute: its wall
   seconds (``--tune-seconds``) and 3/4 of its steps (``--tune-steps``; a tuning step is ~4/3 of a training
   step's work), into ``runs/bench/realtime-student`` (kept when it exists); its CPU seconds are measured as the
   teacher's are (the child process's user + system time).
3. Quality: Fréchet distance of ``--n`` images (seeds 0..n−1, classes cycling, EMA weights) to the Fashion-MNIST
   test set, on the features of the shipped fmnist-cnn classifier (``kuosan evaluate``'s features for this set):
   the student at 1, 2 and 4 steps (and 2 steps at other re-noising points), the teacher with Heun (EDM's
   sampler, 5-35 NFE), DPM-Solver++(2M) and UniPC (2-8 NFE), all on the same seeds.
4. Speed, through ``kuosan.load(...).sample``: images/s at batch 64 and the latency of one image (batch 1), the
   medians of ``--repeats`` rounds that visit every configuration in turn (the machine is shared: interleaving
   spreads its noise over all of them alike; the load average is recorded).

Writes ``benchmarks/results/realtime.json`` and ``realtime.png`` (FD against NFE and against latency) and prints a
table. ``--reuse-quality FILE`` keeps the teacher's FDs of an earlier run of the same teacher (same weights, seeds
and --n: the same images) and measures everything else again. ``realtime_constant-lr.json``: the first run, whose
student was tuned at a constant learning rate (now cosine decay), for comparison. The targets checked (2 CPU cores, the demo network): 2-step FD <= 1.3x the teacher's best at 35 NFE, 1-step
<= 2x; >= 500 images/s at 1 step, batch 64; <= 20 ms for one image at 1 step; tuning CPU <= the teacher's. The speed
targets count the faster of float32 and bfloat16 autocast (``bf16=True``) at 1 step, provided its own FD is within
the 1-step bound.
"""

from __future__ import annotations

import os

from kuosan.runtime import openmp_defaults  # noqa: E402  (imports no torch)

openmp_defaults()  # as the command line does (kuosan.cli): PASSIVE only on a busy machine

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import kuosan  # noqa: E402
from kuosan.checkpoint import resolve_checkpoint  # noqa: E402
from kuosan.evaluation.features import get_extractor  # noqa: E402
from kuosan.evaluation.metrics import frechet_distance, gaussian_stats  # noqa: E402

RESULTS = Path(__file__).parent / "results"
# Per data set (--set): the teacher's run and how it is made, the student's run, the reference and the features.
SETS = {
    "fashion-mnist": dict(teacher=Path("runs/bench/realtime-teacher"), student=Path("runs/bench/realtime-student"),
                          teacher_args=["train", "--config", "demo", "--time_limit", "600"],
                          reference="fashion-mnist:test", extractor="fmnist-cnn", shape=(1, 28), results="realtime"),
    # the colour set: the latent model of `kuosan demo --data emoji` (64x64x3 through 16x16x4 latents)
    "emoji": dict(teacher=Path("runs/demo-emoji/ldm"), student=Path("runs/bench/realtime-emoji-student"),
                  teacher_args=["demo", "--data", "emoji", "--out", "runs/demo-emoji"],
                  reference="emoji:test", extractor="emoji-cnn", shape=(3, 64), results="realtime_emoji"),
}
TEACHER, DATA = SETS["fashion-mnist"]["teacher"], SETS["fashion-mnist"]  # --set replaces both
# (label, sampler, steps, sampler options): the teacher's samplers at 2-35 network evaluations
TEACHER_CONFIGS = ([("heun", "heun", s, None, False) for s in (3, 5, 9, 18)]
                   + [(name, name, s, None, False) for name in ("dpmpp_2m", "unipc") for s in (2, 4, 8)])
# the student at its default re-noising points (ρ = 7: 2.52 for 2 steps), and at 2 steps with other points
STUDENT_CONFIGS = [("consistency", "consistency", s, None, False) for s in (1, 2, 4)] + [
    (f"consistency τ={p:g}", "consistency", 2, {"points": [p]}, False) for p in (0.4, 0.8, 1.5)] + [
    ("consistency bf16", "consistency", s, None, True) for s in (1, 2)]  # the network under bfloat16 autocast
SMOKE = {"teacher": [("heun", "heun", 3, None, False), ("dpmpp_2m", "dpmpp_2m", 2, None, False)],
         "student": [("consistency", "consistency", s, None, False) for s in (1, 2)]
         + [("consistency bf16", "consistency", 1, None, True)]}


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_kuosan(args: list[str], cost_file: Path) -> dict:
    """``python -m kuosan ARGS`` in a child process; its wall and CPU seconds, written to ``cost_file``."""
    t0, c0 = time.time(), children_cpu()
    subprocess.run([sys.executable, "-m", "kuosan", *args], check=True)
    cost = {"command": "kuosan " + " ".join(args), "wall_s": time.time() - t0, "cpu_s": children_cpu() - c0,
            "loadavg_end": list(os.getloadavg())}
    cost_file.write_text(json.dumps(cost, indent=1))
    return cost


def elapsed(run: Path) -> float:
    """Seconds of training recorded in a run's newest checkpoint."""
    return float(json.loads((resolve_checkpoint(run) / "state.json").read_text())["elapsed"])


def build_runs(args) -> dict:
    """The teacher (trained once) and the student (tuned once, for at most the teacher's compute), with what
    each cost. The student's budget: the teacher's wall seconds and 3/4 of its steps (a tuning step is two
    forward passes and one backward, a training step one of each: ~4/3 the work)."""
    teacher_cost = TEACHER.with_suffix(".cost.json")
    if not (TEACHER / "checkpoints").is_dir():
        made = DATA["teacher_args"] + ([] if "--out" in DATA["teacher_args"] else ["--out", str(TEACHER)])
        run_kuosan(made, teacher_cost)
    teacher = json.loads(teacher_cost.read_text()) if teacher_cost.is_file() else {}
    teacher.update(train_s=elapsed(TEACHER), steps=step_of(TEACHER))
    student_cost = args.student.with_suffix(".cost.json")
    seconds = args.tune_seconds or teacher["train_s"]
    tune = ["distill", "--teacher", str(TEACHER), "--out", str(args.student), "--time-limit", f"{seconds:.0f}",
            "--steps", str(args.tune_steps or teacher["steps"] * 3 // 4), *args.tune_args.split()]
    if not (args.student / "checkpoints").is_dir():
        run_kuosan(tune, student_cost)
    student = json.loads(student_cost.read_text()) if student_cost.is_file() else {}
    student.update(train_s=elapsed(args.student), steps=step_of(args.student))
    return {"teacher": teacher, "student": student}


def step_of(run: Path) -> int:
    return int(json.loads((resolve_checkpoint(run) / "state.json").read_text())["step"])


class Reference:
    """The set's classifier's features of its test split, and the Fréchet distance of images to them."""

    def __init__(self):
        from kuosan.evaluation.reference import reference_features
        from kuosan.evaluation.shipped import lookup

        self.extractor = get_extractor(DATA["extractor"])
        channels, side = DATA["shape"]
        found = lookup(DATA["reference"], DATA["extractor"], resolution=side, channels=channels)
        self.real = found[0] if found else reference_features(DATA["reference"], self.extractor)[0]

    def fd(self, images_nhwc: np.ndarray) -> float:
        feats, _ = self.extractor.run(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).contiguous())
        mu, sigma = gaussian_stats(feats)
        return frechet_distance(mu, sigma, self.real.mu, self.real.sigma)


def quality(pipes: dict, configs: list, n: int, ref: Reference, log, reuse: dict | None = None) -> list[dict]:
    """FD per configuration; ``reuse``: the teacher's rows of an earlier results file of the same teacher and
    ``n`` (its images are the same: same weights, same seeds), kept instead of sampled again."""
    rows = []
    for who, label, sampler, steps, options, bf16 in configs:
        if reuse and who == "teacher" and (label, steps) in reuse:
            rows.append({**reuse[label, steps], "reused": True})
            log(f"  {who:8s} {label:22s} NFE {rows[-1]['nfe']:3d}  FD {rows[-1]['fd']:7.3f} (reused)")
            continue
        t0 = time.perf_counter()
        out = pipes[who].sample(list(range(n)), _cycled_labels(pipes[who], n), sampler=sampler, steps=steps,
                                sampler_options=options, batch_size=64, bf16=bf16)
        rows.append({"model": who, "label": label, "sampler": sampler, "steps": steps, "options": options,
                     "bf16": bf16,
                     "nfe": out.nfe, "fd": ref.fd(out.images), "sample_s": time.perf_counter() - t0})
        log(f"  {who:8s} {label:22s} NFE {out.nfe:3d}  FD {rows[-1]['fd']:7.3f}")
    return rows


def _cycled_labels(pipe, n: int):
    """Seed k of class k mod C; a model of finer labels than its data set's classes (the colour demo's, on
    emoji:sub) draws seed k from class k mod 9's subcategories, in their training proportions. None: the
    model's own cycle."""
    from kuosan.data.emoji import cycle_groups, has_groups

    return cycle_groups(pipe.class_names, n)[0] if pipe.num_classes and has_groups(pipe.dataset) else None


def _timed(pipe, seeds, **kw) -> tuple[float, float]:
    """(wall, CPU) seconds of one ``sample`` call; the CPU time is this process's, all threads together."""
    cpu, wall = time.process_time(), time.perf_counter()
    pipe.sample(seeds, **kw)
    return time.perf_counter() - wall, time.process_time() - cpu


def speed(pipes: dict, configs: list, repeats: int, log) -> dict:
    """Median images/s at batch 64 and median ms of one image (the best of 3 a round), over ``repeats``
    interleaved rounds; beside each, the same per CPU-second this process got (on a shared machine it gets
    less than its threads' share of wall time; with 2 threads a quiet machine's wall rate is at most 2x it)."""
    times = {key(c): {"b64": [], "b1": []} for c in configs}
    for who, label, sampler, steps, options, bf16 in configs:  # warm-up: allocator, kernels' first calls
        pipes[who].sample(list(range(64)), sampler=sampler, steps=steps, sampler_options=options, batch_size=64,
                          bf16=bf16)
    for r in range(repeats):
        for c in configs:
            who, kw = c[0], dict(sampler=c[2], steps=c[3], sampler_options=c[4], bf16=c[5])
            times[key(c)]["b64"].append(_timed(pipes[who], list(range(64)), batch_size=64, **kw))
            times[key(c)]["b1"].append(min(_timed(pipes[who], [s], batch_size=1, **kw) for s in range(3)))
        log(f"  speed round {r + 1}/{repeats} (load {os.getloadavg()[0]:.1f})")
    med = lambda pairs, i: statistics.median(p[i] for p in pairs)  # noqa: E731
    return {k: {"images_per_s_b64": 64 / med(t["b64"], 0), "latency_ms_b1": 1000 * med(t["b1"], 0),
                "images_per_cpu_s_b64": 64 / med(t["b64"], 1), "cpu_ms_b1": 1000 * med(t["b1"], 1),
                "best_images_per_s_b64": 64 / min(p[0] for p in t["b64"]),  # the least disturbed round
                "best_latency_ms_b1": 1000 * min(p[0] for p in t["b1"])}
            for k, t in times.items()}


def key(config) -> str:
    who, label, _, steps, _, _ = config
    return f"{who}/{label}/{steps}"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    for key, ax, xlabel in (("nfe", axes[0], "network evaluations per image"),
                            ("latency_ms_b1", axes[1], "latency of one image (ms, batch 1)")):
        for name in ("heun", "dpmpp_2m", "unipc"):
            pts = sorted((r[key], r["fd"]) for r in rows if r["model"] == "teacher" and r["label"] == name)
            ax.plot(*zip(*pts), "o-", label=f"teacher, {name}")
        pts = sorted((r[key], r["fd"]) for r in rows if r["model"] == "student" and r["label"] == "consistency")
        ax.plot(*zip(*pts), "s-", color="black", ms=7, label="student (ECT), 1/2/4 steps")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"Fréchet distance ({DATA['extractor']} features)")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def reusable(path: Path | None, n: int) -> dict | None:
    """The teacher's quality rows of an earlier results file, when it measured this teacher on ``n`` images."""
    if path is None:
        return None
    old = json.loads(path.read_text())
    if int(old["args"]["n"]) != n or old["teacher_weights"] != teacher_weights():
        raise SystemExit(f"{path} measured another teacher or another --n; drop --reuse-quality")
    keep = ("model", "label", "sampler", "steps", "options", "nfe", "fd", "sample_s")
    return {(r["label"], r["steps"]): {k: r[k] for k in keep} for r in old["rows"] if r["model"] == "teacher"}


def teacher_weights() -> str:
    """SHA-256 of the teacher's EMA weights file (from its checkpoint's state.json)."""
    return json.loads((resolve_checkpoint(TEACHER) / "state.json").read_text())["files"]["ema.safetensors"]["sha256"]


def summarise(rows: list[dict], runs: dict) -> dict:
    best = lambda lo, hi: min((r for r in rows if r["model"] == "teacher" and lo <= r["nfe"] <= hi),  # noqa: E731
                              key=lambda r: r["fd"])
    s = {r["steps"]: r for r in rows if r["model"] == "student" and r["label"] == "consistency"}
    top = max(r["nfe"] for r in rows if r["model"] == "teacher")  # 35 (a smoke run: fewer)
    at35 = best(top, top)
    out = {"teacher_best_35": {k: at35[k] for k in ("label", "nfe", "fd", "images_per_s_b64", "latency_ms_b1")},
           "student_fd_ratio": {str(k): s[k]["fd"] / at35["fd"] for k in s},
           "teacher_best_by_nfe": {str(n): {"label": best(n, n)["label"], "fd": best(n, n)["fd"]}
                                   for n in sorted({r["nfe"] for r in rows if r["model"] == "teacher"})}}
    # speed at 1 step: float32 and bfloat16 autocast alike, each with its own FD
    one = [r for r in rows if r["model"] == "student" and r["steps"] == 1 and not r["options"]]
    fast, quick = max(one, key=lambda r: r["images_per_s_b64"]), min(one, key=lambda r: r["latency_ms_b1"])
    out["student_1_step"] = {("bfloat16" if r.get("bf16") else "float32"): {
        "fd_ratio": r["fd"] / at35["fd"], "images_per_s_b64": r["images_per_s_b64"],
        "latency_ms_b1": r["latency_ms_b1"]} for r in one}
    out["targets"] = {
        "2-step FD <= 1.3x teacher's best at 35 NFE": out["student_fd_ratio"]["2"] <= 1.3,
        "1-step FD <= 2x teacher's best at 35 NFE": out["student_fd_ratio"]["1"] <= 2.0,
        ">= 500 images/s at 1 step, batch 64": fast["images_per_s_b64"] >= 500 and fast["fd"] <= 2.0 * at35["fd"],
        "<= 20 ms per image at 1 step, batch 1": quick["latency_ms_b1"] <= 20 and quick["fd"] <= 2.0 * at35["fd"],
        "tuning CPU <= teacher's training CPU": (runs["student"].get("cpu_s") or math.inf)
        <= (runs["teacher"].get("cpu_s") or 0)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500, help="images per configuration for the Fréchet distance")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--tune-seconds", type=float, default=None, help="tuning time limit (default: the teacher's)")
    p.add_argument("--tune-steps", type=int, default=None, help="tuning steps (default: 3/4 of the teacher's)")
    p.add_argument("--tune-args", default="--batch 64 --checkpoint-every 50 --q 16 --stage-steps 20 "
                                          "--warmup-steps 10", help="further kuosan distill options")
    p.add_argument("--reuse-quality", type=Path, default=None,
                   help="an earlier results file of this teacher: keep its teacher FDs (speed is measured again)")
    p.add_argument("--smoke", action="store_true", help="two configurations of each model: a check of the script")
    p.add_argument("--set", choices=sorted(SETS), default="fashion-mnist",
                   help="the data set: its teacher, student, reference and features (see SETS)")
    p.add_argument("--student", type=Path, default=None, help="the student's run directory (default: the set's)")
    p.add_argument("--out-json", type=Path, default=None, help="default benchmarks/results/<the set's name>.json")
    args = p.parse_args(argv)
    global TEACHER, DATA
    DATA = SETS[args.set]
    TEACHER = DATA["teacher"]
    args.student = args.student or DATA["student"]
    args.out_json = args.out_json or RESULTS / f"{DATA['results']}.json"
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    runs = build_runs(args)
    log(f"teacher: {runs['teacher']['train_s']:.0f} s of training; student: {runs['student']['train_s']:.0f} s, "
        f"{runs['student']['steps']} steps")
    pipes = {"teacher": kuosan.load(TEACHER, device="cpu"), "student": kuosan.load(args.student, device="cpu")}
    chosen = SMOKE if args.smoke else {"student": STUDENT_CONFIGS, "teacher": TEACHER_CONFIGS}
    configs = [(who, *c) for who in ("student", "teacher") for c in chosen[who]]
    load_start, threads = list(os.getloadavg()), torch.get_num_threads()
    log(f"quality: {args.n} images a configuration")
    rows = quality(pipes, configs, args.n, Reference(), log, reuse=reusable(args.reuse_quality, args.n))
    log(f"speed: {args.repeats} rounds")
    timed = speed(pipes, configs, args.repeats, log)
    for r, c in zip(rows, configs):
        r.update(timed[key(c)])
    result = {"env": {"torch": torch.__version__, "python": platform.python_version(), "threads": threads,
                      "cpus": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": list(os.getloadavg()),
                      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "shared_machine": True},
              "args": {k: str(v) for k, v in vars(args).items()}, "teacher_weights": teacher_weights(),
              "runs": runs, "rows": rows,
              "summary": summarise(rows, runs)}
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(result, indent=1))
    plot(rows, args.out_json.with_suffix(".png"))
    log(f"\n{'model':8s} {'configuration':24s} {'NFE':>4s} {'FD':>8s} {'img/s b64':>10s} {'ms b1':>8s} "
        f"{'img/CPU-s':>10s} {'CPU-ms b1':>10s}")
    for r in rows:
        log(f"{r['model']:8s} {r['label'] + ', ' + str(r['steps']) + ' steps':24s} {r['nfe']:4d} {r['fd']:8.3f} "
            f"{r['images_per_s_b64']:10.0f} {r['latency_ms_b1']:8.1f} {r['images_per_cpu_s_b64']:10.0f} "
            f"{r['cpu_ms_b1']:10.1f}")
    log(json.dumps(result["summary"], indent=1))
    log(f"wrote {args.out_json} and {args.out_json.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
