"""Latent against pixel diffusion on the colour emoji set at equal CPU time, with and without the
autoencoder's latent cycle-consistency term (``cycle_weight``, :func:`kuosan.training.autoencoder.latent_cycle_loss`).

Every arm is a child process with one thread whose training loop reads its *own CPU time* as its clock
(``time.process_time`` stands in for ``time.time`` inside ``kuosan.training.loop`` and
``kuosan.training.autoencoder``), so ``time_limit`` is a CPU-second budget whatever else the machine runs;
the arms also run side by side, so they share the machine's load alike:

    phase 1:  autoencoder (plain)  |  autoencoder (+ cycle term)  |  pixel model ...
    phase 2:  latent model on each autoencoder                    |  ... pixel model, continued

The pixel model gets T_ae + T_ldm CPU seconds of training, the latent arms' whole cost, autoencoder included.
Then each arm draws the same N class-balanced samples (same seeds, sampler, steps and guidance), scored
against the test split: Fréchet distance in EfficientNet-Lite0 features (and in the shipped emoji
classifier's), beside the real-vs-real floor (N training images against the test split), conditional
accuracy by the emoji classifier, and sampling images per CPU second (decoding included). Reconstruction
PSNR / SSIM of both autoencoders are measured on the whole test split.

    python benchmarks/latent_emoji.py --ae-cpu 240 --ldm-cpu 300 --n 270 --work /tmp/latent-emoji

Writes ``benchmarks/results/latent_emoji.json``, the sample grids ``benchmarks/results/latent_emoji_*.png``
and the picture ``docs/latent-vs-pixel-emoji.png``, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PICTURE = ROOT / "docs" / "latent-vs-pixel-emoji.png"
DATA = "emoji"
SAMPLER = {"sampler": "dpmpp_2m", "steps": 16, "guidance": 2.0}  # configs/emoji-ldm.json when this was measured
CYCLE_WEIGHT = 0.1
# Constant learning rate after warm-up (no schedule that would need the step count in advance) and an EMA
# with a half-life of ~140 steps: the same for every arm.
COMMON = {"train.lr_decay": "constant", "train.ema_decay": 0.995, "train.steps": 10 ** 7, "train.log_every": 50,
          "train.checkpoint_every": 0, "train.sample_every": 0, "train.device": "cpu", "train.seed": 0,
          "sample.sampler": "euler", "sample.steps": 1}  # the loop's closing grid made cheap; sampling is below
LATENT = {**COMMON}  # configs/emoji-ldm.json as it is: UNet base 32, mults 1,2,2 on 4x16x16, batch 32
# The pixel model: the same UNet family on 3x64x64, two levels more (64, 32, 16, 8) with the latent model's
# widths from 16x16 down (64 at 16 and 8, attention at 8) and narrow levels above, so a step stays affordable
# on a CPU: 0.74 GFLOP a forward against the latent model's 0.13 (kuosan.nets.build.count_flops).
PIXEL = {**COMMON, "model.base_channels": 16, "model.channel_mults": "1,2,4,4", "model.num_blocks": 1,
         "model.attn_resolutions": "8", "diffusion.sigma_data": 0.5, "diffusion.p_mean": -1.2}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _use_cpu_clock() -> None:
    """The training loops' ``time.time`` becomes this process's CPU time (one thread: CPU seconds of work)."""
    import types

    import kuosan.training.autoencoder as ae_loop
    import kuosan.training.loop as loop

    clock = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    clock.time = time.process_time
    loop.time = ae_loop.time = clock


# --- children ----------------------------------------------------------------------------------------

def child_autoencoder(spec: dict) -> dict:
    from kuosan.latent import reconstruction_report
    from kuosan.training.autoencoder import PRESETS, AutoencoderTrainConfig, train_autoencoder

    fields = {**PRESETS["emoji-demo"], "lr_decay": "constant", "ema_decay": 0.995, "steps": 10 ** 7,
              "log_every": 50, "checkpoint_every": 0, "device": "cpu", "out": spec["out"],
              "time_limit": spec["cpu_seconds"], "cycle_weight": spec["cycle_weight"]}
    out = train_autoencoder(AutoencoderTrainConfig(**fields), log=lambda *a: None)
    train_cpu = _cpu()
    recon = reconstruction_report(out, log=lambda *a: None)
    return {"dir": str(out), "reconstruction": recon, "train_process_cpu_seconds": round(train_cpu, 1),
            **_run_summary(out)}


def child_diffusion(spec: dict) -> dict:
    from kuosan.config import load_config, resolve_config_path
    from kuosan.training.loop import train

    overrides = {**(LATENT if spec.get("autoencoder") else PIXEL), "train.data": DATA, "train.out": spec["out"],
                 "train.time_limit": spec["cpu_seconds"]}
    if spec.get("autoencoder"):
        overrides["train.autoencoder"] = spec["autoencoder"]
    from kuosan.checkpoint import list_checkpoints

    # a run stopped part-way (a signal writes a checkpoint) continues where it stopped: the loop resumes
    # bit-exactly, and its recorded elapsed time is CPU time here, so the budget holds across the break
    run = train(load_config(None, overrides, base=resolve_config_path("emoji-ldm")), progress=False,
                resume=bool(list_checkpoints(spec["out"])), log=lambda *a: None)
    return {"dir": str(run), **_run_summary(run)}


def _run_summary(run: Path) -> dict:
    from kuosan.checkpoint import resolve_checkpoint
    from kuosan.records import read_train_state

    state = read_train_state(resolve_checkpoint(run))
    rows = [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {"steps": state.step, "loop_cpu_seconds": round(state.elapsed, 1),
            "last_logged_loss": rows[-1]["loss"] if rows else None}


def child_sample(spec: dict) -> dict:
    import kuosan

    pipe = kuosan.load(spec["run"], device="cpu")
    n, k = spec["n"], pipe.num_classes
    labels = [i % k for i in range(n)]
    c0, t0 = _cpu(), time.time()
    res = pipe.sample(list(range(n)), labels, batch_size=30, **SAMPLER)
    cpu, wall = _cpu() - c0, time.time() - t0
    np.savez_compressed(spec["out"], images=res.images, labels=res.labels)
    return {"samples": spec["out"], "n": n, "sampling_cpu_seconds": round(cpu, 1), "sampling_wall_seconds": round(wall, 1),
            "images_per_cpu_second": round(n / cpu, 3), "nfe": res.nfe}


CHILDREN = {"autoencoder": child_autoencoder, "diffusion": child_diffusion, "sample": child_sample}


def child_main(kind: str, spec_path: str) -> None:
    import torch

    torch.set_num_threads(1)
    _use_cpu_clock()
    spec = json.loads(Path(spec_path).read_text())
    t0 = time.time()
    result = CHILDREN[kind](spec)
    result.update(process_cpu_seconds=round(_cpu(), 1), wall_seconds=round(time.time() - t0, 1))
    Path(spec["result"]).write_text(json.dumps(result, indent=2))


# --- the parent ------------------------------------------------------------------------------------------

def _start(kind: str, name: str, spec: dict, work: Path, reuse: bool = False):
    """Start child ``name``; with ``reuse``, a child whose result file exists is not run again."""
    spec = {**spec, "result": str(work / f"{name}.result.json")}
    if reuse and Path(spec["result"]).is_file():
        return name, None, Path(spec["result"])
    path = work / f"{name}.spec.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KUOSAN_THREADS": "1"}
    log = open(work / f"{name}.log", "w")
    proc = subprocess.Popen([sys.executable, __file__, "--child", kind, str(path)], stdout=log, stderr=subprocess.STDOUT,
                            env=env, cwd=ROOT)
    return name, proc, Path(spec["result"])


def _wait(started) -> dict:
    out = {}
    for name, proc, result in started:
        if proc is not None and proc.wait() != 0:
            raise SystemExit(f"{name} failed (exit {proc.returncode}); see {result.parent / (name + '.log')}")
        out[name] = json.loads(result.read_text())
    return out


def score(samples: dict, n: int) -> dict:
    """FD (EfficientNet-Lite0 and emoji-cnn features) against the test split, the floor, conditional accuracy."""
    import torch

    from kuosan.data import load_dataset
    from kuosan.data.dataset import take_stratified
    from kuosan.evaluation.classifier import load_classifier, predict
    from kuosan.evaluation.features import get_extractor
    from kuosan.evaluation.metrics import frechet_distance_features

    test, train = load_dataset(f"{DATA}:test"), load_dataset(f"{DATA}:train")
    floor_images = train.images[torch.from_numpy(take_stratified(train.labels.numpy(), n))]
    clf, _ = load_classifier("emoji-cnn")
    out = {"reference": f"{DATA}:test ({len(test)} images)", "n": n,
           "floor_is": f"{n} class-balanced training images against the test split"}
    gens = {}
    for arm, path in samples.items():
        with np.load(path) as f:
            gens[arm] = (torch.from_numpy(np.ascontiguousarray(f["images"].transpose(0, 3, 1, 2))), f["labels"])
    for name in ("efficientnet-lite0", "emoji-cnn"):
        ext = get_extractor(name, device="cpu")
        ref = ext(test.images)
        out[f"fd_{name}_floor"] = frechet_distance_features(ext(floor_images), ref)
        for arm, (images, _) in gens.items():
            out.setdefault(arm, {})[f"fd_{name}"] = frechet_distance_features(ext(images), ref)
    out["conditional_accuracy_floor"] = float((predict(clf, test.images).argmax(1) == test.labels.numpy()).mean())
    for arm, (images, labels) in gens.items():
        out[arm]["conditional_accuracy"] = float((predict(clf, images).argmax(1) == labels).mean())
    return out


def _label_block(images: np.ndarray, title: str, k: int, per_class: int):
    """A PIL image: ``per_class`` rows of one sample per class (columns = classes) under a title line."""
    from PIL import Image, ImageDraw

    from kuosan.images import make_grid

    labels = np.arange(len(images)) % k
    order = np.concatenate([np.nonzero(labels == c)[0][:per_class] for c in range(k)])
    cols = images[order].reshape(k, per_class, *images.shape[1:]).transpose(1, 0, 2, 3, 4).reshape(-1, *images.shape[1:])
    grid = Image.fromarray(make_grid(cols, nrow=k, value=225))
    grid = grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST)
    block = Image.new("RGB", (grid.width, grid.height + 22), "white")
    ImageDraw.Draw(block).text((4, 4), title, fill="black")
    block.paste(grid, (0, 22))
    return block


def picture(samples: dict, titles: dict, class_names: list, path: Path, per_class: int = 3) -> Path:
    from PIL import Image, ImageDraw

    blocks = []
    for arm, npz in samples.items():
        with np.load(npz) as f:
            images = f["images"]
        block = _label_block(images, titles[arm], len(class_names), per_class)
        block.save(RESULTS / f"latent_emoji_{arm}.png")
        blocks.append(block)
    head = Image.new("RGB", (blocks[0].width, 20), "white")
    draw = ImageDraw.Draw(head)
    for c, name in enumerate(class_names):
        draw.text((4 + c * blocks[0].width / len(class_names), 4), name, fill="black")
    canvas = Image.new("RGB", (blocks[0].width, 20 + sum(b.height + 8 for b in blocks)), "white")
    canvas.paste(head, (0, 0))
    y = 20
    for b in blocks:
        canvas.paste(b, (0, y))
        y += b.height + 8
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ae-cpu", type=float, default=240, help="CPU seconds of autoencoder training (each)")
    p.add_argument("--ldm-cpu", type=float, default=300, help="CPU seconds of latent model training (each)")
    p.add_argument("--n", type=int, default=270, help="samples per arm (a multiple of the 9 classes)")
    p.add_argument("--work", default="/tmp/latent-emoji", help="where the runs go")
    p.add_argument("--reuse", action="store_true", help="keep the finished arms in --work (after a crash)")
    p.add_argument("--child", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child_main(*args.child)
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = {"KUOSAN_CACHE": os.environ.get("KUOSAN_CACHE")}
    load0, c0, t0 = os.getloadavg(), _cpu(), time.time()
    ta, tl = args.ae_cpu, args.ldm_cpu
    print(f"phase 1: two autoencoders ({ta:g} CPU-s each) and the pixel model ({ta + tl:g} CPU-s), side by side",
          flush=True)
    pixel = _start("diffusion", "pixel", {"out": str(work / "pixel"), "cpu_seconds": ta + tl}, work, args.reuse)
    aes = [_start("autoencoder", name, {"out": str(work / name), "cpu_seconds": ta, "cycle_weight": w}, work,
                  args.reuse)
           for name, w in (("ae", 0.0), ("ae_cycle", CYCLE_WEIGHT))]
    ae = _wait(aes)
    print(f"phase 2: a latent model on each autoencoder ({tl:g} CPU-s each)", flush=True)
    ldms = [_start("diffusion", name, {"out": str(work / name), "cpu_seconds": tl, "autoencoder": ae[src]["dir"]}, work,
                   args.reuse)
            for name, src in (("latent", "ae"), ("latent_cycle", "ae_cycle"))]
    runs = _wait(ldms + [pixel])
    load_mid = os.getloadavg()
    print(f"sampling {args.n} images per arm ({SAMPLER['sampler']}, {SAMPLER['steps']} steps, guidance "
          f"{SAMPLER['guidance']:g}), side by side", flush=True)
    sampled = _wait([_start("sample", f"sample_{arm}", {"run": runs[arm]["dir"], "n": args.n,
                                                        "out": str(work / f"{arm}_samples.npz")}, work, args.reuse)
                     for arm in ("pixel", "latent", "latent_cycle")])
    print("scoring ...", flush=True)
    scores = score({arm: sampled[f"sample_{arm}"]["samples"] for arm in ("pixel", "latent", "latent_cycle")}, args.n)

    arms = {}
    for arm, source in (("pixel", None), ("latent", "ae"), ("latent_cycle", "ae_cycle")):
        r, s = runs[arm], sampled[f"sample_{arm}"]
        cost = r["loop_cpu_seconds"] + (ae[source]["loop_cpu_seconds"] if source else 0.0)
        arms[arm] = {"training_cpu_seconds": round(cost, 1), "diffusion_steps": r["steps"],
                     "diffusion_loop_cpu_seconds": r["loop_cpu_seconds"], "diffusion_process_cpu_seconds":
                     r["process_cpu_seconds"], "last_logged_loss": r["last_logged_loss"],
                     "training_wall_seconds": r["wall_seconds"], **scores[arm],
                     "sampling_images_per_cpu_second": s["images_per_cpu_second"], "nfe": s["nfe"]}
        if source:
            a = ae[source]
            arms[arm]["autoencoder"] = {"steps": a["steps"], "loop_cpu_seconds": a["loop_cpu_seconds"],
                                        "cycle_weight": CYCLE_WEIGHT if "cycle" in source else 0.0,
                                        "test_psnr": a["reconstruction"]["psnr"], "test_ssim": a["reconstruction"]["ssim"],
                                        "test_images": a["reconstruction"]["images"]}
    from kuosan.data import load_dataset

    names = load_dataset(f"{DATA}:test", max_images=1).class_names
    titles = {arm: f"{arm.replace('_', ' + ')}: FD {arms[arm]['fd_efficientnet-lite0']:.1f} (EfficientNet-Lite0), "
                   f"accuracy {arms[arm]['conditional_accuracy']:.2f}, {arms[arm]['training_cpu_seconds']:.0f} CPU-s"
              for arm in arms}
    titles["latent_cycle"] = titles["latent_cycle"].replace("latent + cycle", "latent, autoencoder with cycle term")
    pic = picture({arm: sampled[f"sample_{arm}"]["samples"] for arm in arms}, titles, names, PICTURE)
    result = {
        "machine": {"cpus": os.cpu_count(), "threads_per_arm": 1, "load_average_at_start": list(load0),
                    "load_average_after_training": list(load_mid), "load_average_at_end": list(os.getloadavg()),
                    "wall_seconds": round(time.time() - t0, 1), "kuosan_cache": env["KUOSAN_CACHE"]},
        "budget": {"autoencoder_cpu_seconds": ta, "latent_model_cpu_seconds": tl, "pixel_model_cpu_seconds": ta + tl,
                   "clock": "each arm's own CPU time (time.process_time), one thread, arms side by side"},
        "sampler": SAMPLER, "cycle_weight": CYCLE_WEIGHT,
        "models": {"latent": "configs/emoji-ldm.json (UNet base 32, mults 1,2,2, attention at 8) on 4x16x16",
                   "pixel": "UNet base 16, mults 1,2,4,4, 1 block a level, attention at 8, on 3x64x64",
                   "autoencoder": "training.autoencoder.PRESETS['emoji-demo'] (base 16, mults 1,2,4, L1)"},
        "floor": {"fd_efficientnet-lite0": scores["fd_efficientnet-lite0_floor"],
                  "fd_emoji-cnn": scores["fd_emoji-cnn_floor"],
                  "conditional_accuracy": scores["conditional_accuracy_floor"], "is": scores["floor_is"]},
        "reference": scores["reference"], "n": args.n, "arms": arms, "picture": str(pic.relative_to(ROOT)),
        "all_children_cpu_seconds": round(sum(x["process_cpu_seconds"] for x in [*ae.values(), *runs.values(),
                                                                                  *sampled.values()]), 1),
        "parent_cpu_seconds": round(_cpu() - c0, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latent_emoji.json").write_text(json.dumps(result, indent=2))
    _print(result)
    return 0


def _print(r: dict) -> None:
    f = r["floor"]
    print(f"\n{'arm':<14}{'train CPU-s':>12}{'steps':>8}{'FD effnet':>11}{'FD emoji-cnn':>13}{'cond. acc':>10}"
          f"{'img/CPU-s':>11}{'AE PSNR':>9}{'AE SSIM':>9}")
    for arm, a in r["arms"].items():
        e = a.get("autoencoder", {})
        print(f"{arm:<14}{a['training_cpu_seconds']:>12.0f}{a['diffusion_steps']:>8}{a['fd_efficientnet-lite0']:>11.2f}"
              f"{a['fd_emoji-cnn']:>13.2f}{a['conditional_accuracy']:>10.3f}{a['sampling_images_per_cpu_second']:>11.2f}"
              f"{e.get('test_psnr', float('nan')):>9.2f}{e.get('test_ssim', float('nan')):>9.4f}")
    print(f"{'real floor':<14}{'':>12}{'':>8}{f['fd_efficientnet-lite0']:>11.2f}{f['fd_emoji-cnn']:>13.2f}"
          f"{f['conditional_accuracy']:>10.3f}")
    m = r["machine"]
    print(f"load average {m['load_average_at_start'][0]:.1f} at start, {m['load_average_at_end'][0]:.1f} at end; "
          f"{m['wall_seconds'] / 60:.1f} min wall; children used {r['all_children_cpu_seconds'] / 60:.1f} CPU-min")


if __name__ == "__main__":
    sys.exit(main())
