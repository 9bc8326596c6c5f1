"""Every example in every ``--help`` runs: the lines starting with ``kuosan `` after "example" in each
command's and subcommand's epilog, run in-process through :func:`kuosan.cli.main`, each in a fresh folder
holding what it reads (a tiny Fashion-MNIST run standing in for runs/fm, an autoencoder, a LoRA run, a
distilled student, GAN runs, a diffusers UNet directory, input PNGs made from the data set, a samples.npz …).

Only sizes change: --steps, --n and --minutes get small values, and size options the example does not give
(batch, image count, rounds, the end-of-run sample grid's steps) are put before the example's own, so that
every flag the example writes still applies. An example with ``--resume`` first runs without it, which makes
the run it resumes. ``kuosan serve`` runs with the web server's loop stubbed (it serves until stopped).
Examples that cannot run here as written are listed in ``CANNOT_RUN_HERE`` with the reason; they must then
fail as a door should, with one ``kuosan: error:`` line naming that reason.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kuosan.cli import build_parser, main

pytestmark = pytest.mark.slow

HEADING = re.compile(r"^\s*examples?\b", re.IGNORECASE)

# example text -> why it cannot run on this machine as written (it must then fail with one line saying so)
CANNOT_RUN_HERE = {
    "--inception-weights pt_inception-2015-12-05.pth": (
        "the FID Inception-v3 weights are never downloaded, and none are on this machine", "inception"),
}
if importlib.util.find_spec("openvino") is None:  # an optional runtime: pip install 'kuosan[openvino]'
    CANNOT_RUN_HERE["--backend openvino"] = ("the optional package openvino is not installed here", "openvino")


def _walk(parser, path):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, [*path, name])


def collect(prefix: str = "kuosan ") -> list[tuple[str, str]]:
    """(where, command) for every example line of every epilog that starts with ``prefix``, in order, each
    command once (the prose after it dropped)."""
    seen, out = set(), []
    for path, parser in _walk(build_parser(), ["kuosan"]):
        lines = (parser.epilog or "").splitlines()
        start = next((i for i, ln in enumerate(lines) if HEADING.match(ln)), None)
        if start is None:
            continue
        for ln in lines[start + 1:]:
            text = ln.strip()
            if text.startswith(prefix):
                command = " && ".join(_without_prose(part) for part in text.split("&&"))
                if command not in seen:
                    seen.add(command)
                    out.append((" ".join(path), command))
    return out


def _without_prose(part: str) -> str:
    """An example's command: two spaces or `` #`` start the prose beside it."""
    return re.split(r"\s{2,}|\s#", part.strip())[0]


def commands(line: str) -> list[list[str]]:
    """The argv lists of an example line (``&&`` separates commands)."""
    out = []
    for part in line.split("&&"):
        words = shlex.split(part)
        assert words[0] == "kuosan", line
        out.append(words[1:])
    return out


# --- sizes ---------------------------------------------------------------------------------------------

TRAINING = {"train", "train-autoencoder", "train-gan", "distill"}
# The demo's smallest budget that still trains to its first metrics line on a busy 2-core machine (with
# --minutes 0.6 it trains 10 s and logs nothing: its report then has no training stability section).
DEMO_MINUTES = "2"
# put before the example's own options: smaller than the defaults, overridden by anything the example sets
BEFORE = {
    "train": ["--batch", "8", "--max_images", "256", "--sample.sampler", "euler", "--sample.steps", "1"],
    "train-autoencoder": ["--batch", "8", "--max_images", "256", "--scale_images", "256"],
    "train-gan": ["--batch", "8", "--max_images", "256"],
    "distill": ["--batch", "8", "--max-images", "256"],
    "bench": ["--batch", "2", "--rounds", "1", "--sample-rounds", "1", "--sample-steps", "1"],
    "evaluate": ["--max-real", "32"],
}


def small(argv: list[str]) -> list[str]:
    """The same command at a tiny size."""
    cmd, argv = argv[0], list(argv)
    sub = argv[1] if len(argv) > 1 else ""
    for i, (option, value) in enumerate(zip(argv, argv[1:])):
        if option == "--steps" and cmd in TRAINING:
            argv[i + 1] = "2"
        elif option == "--steps" and cmd in ("sample", "evaluate", "edit"):
            argv[i + 1] = str(min(int(value), 2))
        elif option == "--n" and cmd in ("sample", "evaluate"):
            argv[i + 1] = str(min(int(value), 16))
        elif option == "--minutes":
            argv[i + 1] = DEMO_MINUTES
    if cmd in ("sample", "evaluate") and "--n" in argv and "--seeds" in argv:
        argv[argv.index("--seeds") + 1] = f"0-{int(argv[argv.index('--n') + 1]) - 1}"
    if cmd in TRAINING and "--steps" not in argv:
        argv += ["--steps", "2"]
    if cmd == "demo" and "--minutes" not in argv:
        argv += ["--minutes", DEMO_MINUTES]
    head = 2 if cmd in ("edit", "latent", "lora") and sub else 1
    return argv[:head] + BEFORE.get(cmd, []) + argv[head:]


# --- what the examples read -------------------------------------------------------------------------

OUTPUTS = {"--out", "--grid", "--onnx"}
FM_IMAGES = {"shoe.png": 7, "shirt.png": 6, "bag.png": 8, "a.png": 0, "b.png": 1}  # Fashion-MNIST classes


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The stand-ins, built once at tiny sizes."""
    root = tmp_path_factory.mktemp("store")
    tiny = ["--config", "digits-tiny", "--batch", "8", "--max_images", "256", "--sample.sampler", "euler",
            "--sample.steps", "2", "--checkpoint_every", "1"]

    def run(*argv):
        assert main([str(a) for a in argv]) == 0, argv

    run("train", *tiny, "--data", "fashion-mnist", "--steps", "2", "--out", root / "fm")
    run("train", "--init-from", root / "fm", "--data", "mnist", "--lora-rank", "8", "--batch", "8",
        "--max_images", "256", "--steps", "2", "--sample.steps", "2", "--out", root / "mnist-lora")
    run("train-autoencoder", "--config", "digits-tiny", "--data", "fashion-mnist", "--steps", "2", "--batch", "8",
        "--scale_images", "256", "--out", root / "ae-fm")
    run("train", *tiny, "--data", "fashion-mnist", "--autoencoder", root / "ae-fm", "--sigma_data", "1", "--steps", "2",
        "--out", root / "ldm-fm")
    run("distill", "--teacher", root / "fm", "--steps", "2", "--batch", "8", "--max-images", "256",
        "--out", root / "fm-ect")
    for name, config in (("gan-fm", "fashion-mnist"), ("gan-smnist", "stacked-mnist")):
        run("train-gan", "--config", config, "--steps", "2", "--batch", "8", "--max_images", "256",
            "--out", root / name)
    _posthoc_snapshots(root / "fm")
    run("sample", "--checkpoint", root / "fm", "--n", "16", "--out", root / "samples")
    run("sample", "--checkpoint", root / "gan-smnist", "--n", "16", "--out", root / "smnist-samples")
    run("evaluate", "--images", root / "samples" / "samples.npz", "--max-real", "32", "--out", root / "eval")
    _diffusers_unet(root / "diffusers-unet-dir")
    _pictures(root)
    return root


def _diffusers_unet(path: Path) -> None:
    """A diffusers UNet2DModel directory with its DDPM scheduler's config, as diffusers saves a pipeline's."""
    import diffusers

    torch.manual_seed(0)
    diffusers.UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                          layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
                          down_block_types=("DownBlock2D", "DownBlock2D"),
                          up_block_types=("UpBlock2D", "UpBlock2D")).save_pretrained(path)
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_config(path)


def _posthoc_snapshots(run: Path) -> None:
    """EDM2 post-hoc EMA snapshots in the run (``kuosan train`` has no option that writes them yet)."""
    import kuosan
    from kuosan.training.posthoc_ema import PosthocEMA

    precond = kuosan.load(run, device="cpu").precond
    posthoc = PosthocEMA(precond)
    for step in range(4):
        with torch.no_grad():
            for p in precond.parameters():
                p.add_(0.001 * torch.randn_like(p))
        posthoc.update(precond, step)
        if step % 2:
            posthoc.save_snapshot(run, step + 1)


def _pictures(root: Path) -> None:
    """Input PNGs from Fashion-MNIST's test split, a mask with a hole, a folder of PNGs, a class folder, my.yaml."""
    from kuosan.data import load_dataset

    test = load_dataset("fashion-mnist:test")
    for name, label in FM_IMAGES.items():
        k = int((test.labels == label).nonzero()[0])
        Image.fromarray(test.images[k, 0].numpy()).save(root / name)
    hole = np.zeros((28, 28), np.uint8)
    hole[8:20, 8:20] = 255
    Image.fromarray(hole).save(root / "hole.png")
    (root / "generated_pngs").mkdir()
    for p in sorted((root / "samples").glob("seed*.png")):
        shutil.copy(p, root / "generated_pngs" / p.name)
    for label, name in ((7, "Sneaker"), (5, "Sandal")):
        folder = root / "folder" / name
        folder.mkdir(parents=True)
        for i, k in enumerate((test.labels == label).nonzero()[:6, 0].tolist()):
            Image.fromarray(test.images[k, 0].numpy()).save(folder / f"{i}.png")
    (root / "my.yaml").write_text(json.dumps({
        "model": {"kind": "unet", "base_channels": 16, "channel_mults": [1, 2], "num_blocks": 1,
                  "attn_resolutions": [7]},
        "train": {"data": "fashion-mnist", "max_images": 256, "batch": 8}}))


def _copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        return
    (shutil.copytree if src.is_dir() else shutil.copy)(src, dest)


# example path (its first components) -> the stand-in, relative to the store
STANDINS = {
    "runs/fm": "fm", "runs/fm4": "fm", "runs/fmnist": "fm", "runs/mnist-lora": "mnist-lora", "runs/ae-fm": "ae-fm",
    "runs/ldm-fm": "ldm-fm", "runs/fm-ect": "fm-ect", "runs/gan-fm": "gan-fm", "runs/gan-smnist": "gan-smnist",
    "path/to/diffusers-unet-dir": "diffusers-unet-dir", "path/to/folder": "folder", "generated_pngs": "generated_pngs",
    "samples.npz": "samples/samples.npz", "samples/samples.npz": "smnist-samples/samples.npz",
    "eval/stats.npz": "eval/stats.npz", "my.yaml": "my.yaml",
    "hole.png": "hole.png", **{name: name for name in FM_IMAGES},
}
ADAPTERS = ("a.safetensors", "b.safetensors")  # copies of the LoRA run's adapter


def materialise(argv: list[str], store: Path, here: Path) -> None:
    """Put in ``here`` what ``argv`` reads (not what it writes: a run it resumes is made by running it first)."""
    for i, token in enumerate(argv):
        if i and argv[i - 1] in OUTPUTS:
            continue
        path = token.split(":")[0].rstrip("/")
        if path == "runs":  # serve --runs runs/: a folder of runs
            _copy(store / "fm", here / "runs" / "fm")
            _copy(store / "fm-ect", here / "runs" / "fm-ect")
        if path in ADAPTERS:
            stem = path.removesuffix(".safetensors")
            _copy(store / "mnist-lora" / "adapter.safetensors", here / f"{stem}.safetensors")
            _copy(store / "mnist-lora" / "adapter.json", here / f"{stem}.json")
        for key, src in STANDINS.items():
            if path == key or path.startswith(key + "/"):
                _copy(store / src, here / key)
        if path == "runs/demo-emoji" or path.startswith("runs/demo-emoji/"):
            _copy(_emoji_demo(store), here / "runs" / "demo-emoji")


def _emoji_demo(store: Path) -> Path:
    """A stand-in for ``kuosan demo --data emoji``'s runs (its presets, two steps each), built on first use."""
    root = store / "demo-emoji"
    if not (root / "ldm").is_dir():
        for argv in (["train-autoencoder", "--config", "emoji-demo", "--steps", "2", "--batch", "8",
                      "--max_images", "256", "--scale_images", "256", "--out", root / "autoencoder"],
                     ["train", "--config", "emoji-ldm", "--data", "emoji:sub", "--autoencoder", root / "autoencoder",
                      "--steps", "2", "--batch", "8", "--max_images", "256", "--sample.steps", "1",
                      "--out", root / "ldm"]):
            assert main([str(a) for a in argv]) == 0, argv
    return root


# --- the examples ------------------------------------------------------------------------------------

EXAMPLES = collect()


def test_examples_are_found_in_every_command_with_an_epilog():
    where = {w.split()[1] for w, _ in EXAMPLES if len(w.split()) > 1}
    assert {"sample", "edit", "data", "train-autoencoder", "latent", "lora", "evaluate", "demo", "bench",
            "train"} <= where, where
    assert len(EXAMPLES) >= 40


# Examples that are wrong in files this test's author does not own; strict: they fail loudly once fixed.
KNOWN_WRONG: dict[str, str] = {}


# Examples that fail at the tiny size this test runs them at, for a bug in a file its author does not own; not
# strict: on an idle machine the demo may train past its first metrics line within the budget.
FAIL_WHEN_SMALL: dict[str, str] = {}


def _cases(found):
    def marks(line):
        return [pytest.mark.xfail(strict=True, reason=why) for text, why in KNOWN_WRONG.items() if text in line] + \
            [pytest.mark.xfail(strict=False, reason=why) for text, why in FAIL_WHEN_SMALL.items()
             if line.startswith(text)]

    return [pytest.param(where, line, id=line, marks=marks(line)) for where, line in found]


TORCHRUN = collect("torchrun ")


@pytest.mark.parametrize("where,line", _cases(TORCHRUN))
def test_torchrun_examples_parse_in_torchrun_and_in_kuosan(where, line):
    """torchrun's own parser takes any prefix of its options (--n is --nnodes'), so a kuosan option after
    ``-m kuosan`` can be swallowed; both parsers must leave the example as written."""
    from torch.distributed.run import get_args_parser

    words = shlex.split(line)[1:]
    try:
        args = get_args_parser().parse_args(words)
    except SystemExit:
        pytest.fail(f"{where}: torchrun refuses `{line}`")
    assert args.module and args.training_script == "kuosan", args
    assert [*words[words.index("kuosan") + 1:]] == args.training_script_args, (words, args.training_script_args)
    build_parser().parse_args(args.training_script_args)


@pytest.mark.parametrize("where,line", _cases(EXAMPLES))
def test_help_example_runs(store, tmp_path, monkeypatch, capsys, where, line):
    from kuosan.data.emoji_sources import SOURCES_ENV, sources_dir

    monkeypatch.chdir(tmp_path)
    emoji = sources_dir()  # where set-up installed the colour set's sources, before the cache moves
    if emoji.is_dir():
        monkeypatch.setenv(SOURCES_ENV, str(emoji))
    elif "emoji" in line:  # the data set, or a stand-in run trained on it (tests/test_data_emoji.py checks
        # that a missing source is one clear line)
        pytest.skip("the emoji sources are not installed (bash scripts/install_emoji_data.sh)")
    monkeypatch.setenv("KUOSAN_CACHE", str(store / "cache"))  # shared: the latent cache is filled once
    if "serve" in line.split()[:2]:
        import uvicorn

        monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)  # it would serve until stopped
    blocked = next((why for text, why in CANNOT_RUN_HERE.items() if text in line), None)
    for argv in commands(line):
        argv = small(argv)
        materialise(argv, store, tmp_path)
        if "--resume" in argv and not (tmp_path / argv[argv.index("--out") + 1]).exists():
            fresh = [a for a in argv if a not in ("--resume", "--allow-changes")]
            assert main(fresh) == 0, f"{where}: {' '.join(fresh)} (making the run that the example resumes)"
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        if blocked:
            reason, word = blocked
            assert code == 2 and err and err[-1].startswith("kuosan: error:") and word in err[-1].lower(), err
            pytest.skip(f"cannot run here as written: {reason}")
        assert code == 0, f"{where}: `{line}` ran as `kuosan {' '.join(argv)}`: exit {code}: {err[-1:] or err}"
