"""Every door, fuzzed: each command of the command line and the Python API (``Pipeline.sample``, the editing
functions) fed hostile values (NaN, inf, negative, huge, fractional, empty, wrong types, bad paths).

Each case must end in one of three ways: an int return (0, or 2 with exactly one stderr line, its last,
starting ``kuosan: error:``), argparse's own exit (0 for --help; 2 with its usage and one ``... error:``
line), or a :class:`KuosanError` with a one-line message from the API; anything else (a traceback) fails
the test. Whatever is accepted must give finite images: every float image on its way to uint8 passes a guard
that fails on NaN or inf (a NaN guidance would otherwise give black PNGs and exit 0).

Work is bounded by a budget of UNet forward images (:class:`TooLong`): a request the doors accept that would
run long stops there and counts as accepted. Expensive commands (``demo``, ``bench``, training an
autoencoder, evaluation's metrics) are stubbed after their checks. The default suite runs a few examples a
door; ``-m slow`` runs ``test_*_long`` with many more.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import itertools
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis.errors import InvalidArgument
from hypothesis import strategies as st
from PIL import Image

import kuosan
import kuosan.data
import kuosan.images
from kuosan.checkpoint import resolve_checkpoint
from kuosan.cli import main
from kuosan.diffusion.schedules import get_sigmas
from kuosan.errors import KuosanError

TINY = ["--config", "digits-tiny", "--batch", "8", "--max_images", "100", "--sample.sampler", "euler",
        "--sample.steps", "2"]
FORWARD_IMAGES = 3000      # UNet images one case may run; more is "accepted, would take long"
QUICK, LONG = 12, int(os.environ.get("KUOSAN_FUZZ_EXAMPLES", 300))  # examples per door: default suite, -m slow
ERROR = re.compile(r"^kuosan(?: [\w-]+)*: error: ")

# door -> outcome -> cases; written as JSON to $KUOSAN_FUZZ_TALLY at exit (scripts/reliability_table.py)
TALLY: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
if os.environ.get("KUOSAN_FUZZ_TALLY"):
    atexit.register(lambda: Path(os.environ["KUOSAN_FUZZ_TALLY"]).write_text(json.dumps(TALLY, indent=1)))


def tally(door_name: str, outcome: str) -> None:
    TALLY[door_name][outcome] += 1
    try:
        event(outcome)
    except InvalidArgument:  # a plain test, not a hypothesis one
        pass


class TooLong(BaseException):
    """Raised by the forward budget: the request was accepted and would run longer than a test should."""


# --- the world the doors act on ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A two-step digits-tiny run, a tiny autoencoder, a LoRA adapter for the run, images and masks, a
    samples.npz, a folder data set with named classes, and files that are not what their names say."""
    from kuosan.nets.lora import add_lora, save_adapter
    from kuosan.training.autoencoder import AutoencoderTrainConfig, train_autoencoder

    root = tmp_path_factory.mktemp("doors")
    run = root / "run"
    assert main(["train", *TINY, "--steps", "2", "--checkpoint_every", "1", "--out", str(run)]) == 0
    ae = train_autoencoder(AutoencoderTrainConfig(
        data="digits", latent_channels=2, downsample=2, base_channels=8, perceptual="none", steps=2, batch=16,
        warmup_steps=1, log_every=1, checkpoint_every=0, scale_images=64, out=str(root / "ae"), device="cpu"),
        log=lambda *a: None)
    pipe = kuosan.load(run, device="cpu")
    add_lora(pipe.precond, rank=2)
    with torch.no_grad():
        for name, p in pipe.precond.named_parameters():
            if ".lora." in name:
                p.normal_(0, 0.05)
    adapter = save_adapter(pipe.precond, root / "adapter")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 256, (13, 20, 3), dtype=np.uint8)).save(root / "wide.png")
    hole = np.zeros((8, 8), np.uint8)
    hole[2:6, 2:6] = 255
    Image.fromarray(hole).save(root / "hole.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "black.png")
    (root / "text.png").write_text("not a picture\n")
    (root / "empty.png").write_bytes(b"")
    (root / "junk.json").write_text("{not json")
    np.savez(root / "samples.npz", images=rng.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8),
             labels=np.arange(16) % 10)
    for name in ("Sneaker", "Ankle boot"):
        (root / "folder" / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / "folder" / name / f"{i}.png")
    return {"root": root, "run": run, "ae": ae, "adapter": adapter, "ckpt": resolve_checkpoint(run)}


@pytest.fixture(autouse=True)
def guards(monkeypatch, tmp_path):
    """Finite images only; a budget of UNet forwards; caches and cwd in a scratch folder."""
    from kuosan.nets.unet import UNet

    def finite(fn):
        def checked(x, *a, **k):
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                assert bool(torch.isfinite(x).all()), "an accepted request made NaN or infinite images"
            return fn(x, *a, **k)
        return checked

    monkeypatch.setattr(kuosan.images, "to_uint8_nhwc", finite(kuosan.images.to_uint8_nhwc))
    monkeypatch.setattr(kuosan.data, "to_uint8", finite(kuosan.data.to_uint8))
    spent = [0]
    real_forward = UNet.forward

    def forward(self, x, *a, **k):
        spent[0] += x.shape[0]
        if spent[0] > FORWARD_IMAGES:
            raise TooLong
        return real_forward(self, x, *a, **k)

    monkeypatch.setattr(UNet, "forward", forward)
    monkeypatch.setenv("KUOSAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return spent


_serial = itertools.count()


def fresh(tmp_path) -> Path:
    """An output path no earlier example used (tmp_path is shared by a test's examples)."""
    return tmp_path / f"out{next(_serial)}"


def _fill(argv, world, out):
    """Placeholders -> paths: @RUN, @CKPT, @AE, @ADAPTER, @A (an image), @OUT (this example's output), @ROOT/…"""
    subst = {"@RUN": world["run"], "@CKPT": world["ckpt"], "@AE": world["ae"], "@ADAPTER": world["adapter"],
             "@A": world["root"] / "a.png", "@OUT": out}
    out_argv = []
    for token in argv:
        for key in sorted(subst, key=len, reverse=True):
            token = token.replace(key, str(subst[key]))
        out_argv.append(token.replace("@ROOT", str(world["root"])))
    return out_argv


SUBCOMMANDS = {"edit": {"img2img", "inpaint", "invert", "interpolate"},
               "latent": {"encode", "interpolate", "arithmetic"}, "lora": {"info", "merge"}}


def _door_name(argv) -> str:
    """``kuosan COMMAND`` (and its subcommand, when it names one)."""
    words = argv[:2]
    if len(words) == 2 and words[1] in SUBCOMMANDS.get(words[0], ()):
        return f"kuosan {words[0]} {words[1]}"
    return f"kuosan {words[0]}"


def door(argv, capsys):
    """Run one command in-process; assert it ended as a door should; return (code, stdout, stderr)."""
    name = _door_name(argv)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse: --help, or bad usage: one "kuosan: error:" line
        cap = capsys.readouterr()
        assert e.code in (0, 2), (argv, e.code, cap.err)
        lines = cap.err.strip().splitlines()
        if e.code == 2:
            assert len(lines) == 1 and ERROR.match(lines[0]), (argv, cap.err)
        assert "Traceback" not in cap.out + cap.err
        tally(name, "--help" if e.code == 0 else "usage error (argparse)")
        return e.code, cap.out, cap.err
    except TooLong:
        capsys.readouterr()
        tally(name, "accepted (stopped by the forward budget)")
        return None, "", ""
    cap = capsys.readouterr()
    assert isinstance(code, int) and code in (0, 2), (argv, code, cap.err)
    lines = cap.err.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("kuosan: error:")]
    assert len(errors) == (code == 2), (argv, cap.err)
    if code == 2:
        assert lines[-1] == errors[0], (argv, cap.err)  # one line: nothing after it
    assert "Traceback" not in cap.out + cap.err
    tally(name, "ran (exit 0)" if code == 0 else "one-line error (exit 2)")
    return code, cap.out, cap.err


def _fuzz(strategy, quick=QUICK, long=LONG):
    """Two tests from one body: a few examples in the default suite, many under ``-m slow``."""
    def make(body):
        common = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                             HealthCheck.too_slow, HealthCheck.data_too_large])
        fast = settings(max_examples=quick, **common)(given(argv=strategy)(body))
        slow = pytest.mark.slow(settings(max_examples=long, **common)(given(argv=strategy)(body)))
        return fast, slow
    return make


# --- argv: options with values from their own pools, hostile numbers, stray tokens ---------------------

NUMBERS = ["0", "1", "2", "3", "-1", "2.5", "0.5", "1e3", "1e400", "nan", "inf", "-inf", "99999999999999999999",
           "0x10", "", " ", "x", "True", "٣", "1_0"]
PATHS = ["@RUN", "@CKPT", "@AE", "@ADAPTER", "@A", "@ROOT/wide.png", "@ROOT/text.png", "@ROOT/empty.png",
         "@ROOT/nowhere", "@ROOT", "@ROOT/samples.npz", "@ROOT/junk.json", "@CKPT/config.json", "/dev/null", ".",
         "@RUN/checkpoints", "@OUT", "@OUT/x.png"]
IMAGES_IN = ["@A", "@ROOT/wide.png", "@ROOT/hole.png", "@ROOT/text.png", "@ROOT/empty.png", "@ROOT/nowhere.png", "@ROOT"]
OUT_DIRS = ["@OUT", "@OUT/deeper", "@A", "@RUN/checkpoints", "@CKPT", "/dev/null", ""]
SAMPLERS = ["heun", "euler", "ddim", "ddpm", "dpmpp_2m", "dpmpp_3m_sde", "unipc", "lms", "euler_ancestral",
            "consistency", "magic", "HEUN"]
SCHEDULES = ["karras", "exponential", "log-snr", "polyexponential", "vp-linear", "vp-cosine", "nope"]
DEVICES = ["cpu", "auto", "meta", "cuda", "cuda:9", "tpu", ""]
SEED_TEXT = ["0-3", "3-0", "1,5", "0-99999", "0-99999,0-99999", "5,", "7", "9223372036854775807",
             "9223372036854775808", "-3", "1-", "3,17", "3,3"]

# Text without line breaks: an argument holding one would split the error line (see
# test_a_line_break_in_an_argument_stays_on_the_error_line).
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
TEXT = st.text(st.characters(blacklist_characters=LINE_BREAKS, blacklist_categories=("Cs",)), max_size=4)


def _last_value(argv, option):
    """The value argparse takes for ``option``: the one after its last occurrence."""
    i = len(argv) - 1 - argv[::-1].index(option)
    return argv[i + 1]


def _helped(argv) -> bool:
    return any(t in ("--help", "-h") for t in argv)


def argvs(options: dict, stray=(), max_size=4):
    """Lists of ``--option value`` (the value from the option's pool, a hostile number or text; a flag when
    the pool is None), now and then a stray token (a number, a path, --help, text)."""
    def pair(option):
        pool = options[option]
        if pool is None:
            return st.just([option])
        ours = st.sampled_from(pool)
        return st.tuples(st.just(option), st.one_of(ours, ours, ours, ours, st.sampled_from(NUMBERS), TEXT)).map(list)

    pairs = st.sampled_from(sorted(options)).flatmap(pair)
    strays = (st.sampled_from(NUMBERS + PATHS + list(stray) + ["--help", "-h", "--", "--x"]) | TEXT).map(lambda t: [t])
    return st.lists(st.one_of(*[pairs] * 8, strays), max_size=max_size).map(
        lambda parts: [t for part in parts for t in part])


SAMPLE = argvs({
    "--checkpoint": ["@RUN", "@CKPT", "@AE", "@ADAPTER", "@ROOT/nowhere", "@A", "@ROOT", "org/model"],
    "--n": ["1", "2", "4", "64", "100000", "100001"], "--seeds": SEED_TEXT,
    "--class": ["0", "9", "10", "-1", "1.5", "Sneaker", "zero", " 3 "], "--sampler": SAMPLERS,
    "--steps": ["1", "2", "3", "10000", "10001"], "--schedule": SCHEDULES,
    "--guidance": ["0", "1", "2", "100", "100.5"], "--batch": ["1", "3", "65536", "65537"],
    "--threshold": ["clip", "0.995", "none", "1", "1.5"], "--bf16": None, "--raw": None,
    "--adapter": ["@ADAPTER", "@ADAPTER:0.5", "@ADAPTER:nan", "@ADAPTER:-1e9", "@ADAPTER:x", "@ADAPTER:",
                  "@ROOT/nowhere", "@RUN"],
    "--autoencoder": ["@AE", "@RUN", "@ROOT/nowhere"], "--device": DEVICES, "--out": OUT_DIRS})


def _sample_case(world, tmp_path, capsys, argv):
    out = fresh(tmp_path)
    code, stdout, _ = door(["sample", "--checkpoint", str(world["run"]), "--steps", "2", "--out", str(out),
                            *_fill(argv, world, out)], capsys)
    if code == 0 and not _helped(argv):
        assert "images in" in stdout


test_fuzz_sample, test_fuzz_sample_long = _fuzz(SAMPLE)(_sample_case)


EDIT_COMMON = {"--checkpoint": ["@RUN", "@CKPT", "@ROOT/nowhere", "@AE"], "--sampler": SAMPLERS,
               "--steps": ["1", "2", "3", "10001"], "--schedule": SCHEDULES,
               "--class": ["0", "9", "10", "-1", "Sneaker"], "--guidance": ["0", "1", "2", "100.5"],
               "--seed": ["0", "7", "9223372036854775807", "-1"], "--out": OUT_DIRS, "--raw": None, "--device": DEVICES}
BOXES = ["0,0,8,8", "2,2,6,6", "1,1,0,0", "1,2,3", "-1,0,4,4", "0,0,9,9", "1.5,1,4,4", " 2, 2, 6, 6", "0,0,0,0"]
EDIT_MODES = {
    "img2img": {"--input": IMAGES_IN, "--strength": ["0", "1", "0.5", "0.01", "1.5", "-0.1"]},
    "inpaint": {"--input": IMAGES_IN, "--mask": ["@ROOT/hole.png", "@ROOT/black.png", "@A", "@ROOT/text.png",
                                                 "@ROOT/wide.png"],
                "--box": BOXES, "--resample": ["1", "2", "5", "100", "101"], "--jump": ["1", "5", "10000", "10001"]},
    "invert": {"--input": IMAGES_IN},
    "interpolate": {"--seeds": SEED_TEXT, "--classes": ["1,7", "1,1", "Sneaker,zero", "1", "1,2,3", ",", "0,10"],
                    "--n": ["2", "8", "1024", "1025", "1"]},
}
EDIT = st.sampled_from(sorted(EDIT_MODES)).flatmap(
    lambda mode: st.tuples(st.just(mode), argvs({**EDIT_COMMON, **EDIT_MODES[mode]})))


def _edit_case(world, tmp_path, capsys, argv):
    mode, rest = argv
    need = {"img2img": ["--input", "@A"], "inpaint": ["--input", "@A", "--box", "2,2,6,6"],
            "invert": ["--input", "@A"], "interpolate": []}[mode]
    out = fresh(tmp_path)
    door(["edit", mode, "--checkpoint", str(world["run"]), "--steps", "2", "--out", str(out),
          *_fill(need + rest, world, out)], capsys)


test_fuzz_edit, test_fuzz_edit_long = _fuzz(EDIT)(_edit_case)


DATA = st.tuples(st.sampled_from(["digits", "digits:test", "digits:all", "digits:valid", "mnist:test", "@ROOT/folder",
                                  "@ROOT/samples.npz", "@A", "@ROOT/nowhere", "@RUN", "emoji:noto", "", " ", "nope",
                                  "@ROOT/junk.json"]),
                 argvs({"--grid": ["g.png", "@OUT/g.png", "g.txt", ".", "@RUN/checkpoints/g.png", "@A", ""],
                        "--root": ["@ROOT", "@ROOT/nowhere", "", "@A"]}, max_size=3))


def _data_case(world, tmp_path, capsys, argv):
    spec, rest = argv
    door(["data", *_fill([spec, *rest], world, fresh(tmp_path))], capsys)


test_fuzz_data, test_fuzz_data_long = _fuzz(DATA)(_data_case)


WHOLE = ["1", "2", "8", "64", "0", "-1", "2.0", "1e3", "1e12"]
REAL = ["0", "1e-6", "0.1", "1", "2", "-0.1", "1e9"]
AE = argvs({"--config": ["digits-tiny", "fashion-mnist", "emoji", "@ROOT/junk.json", "@CKPT/config.json",
                         "@AE/config.json", "@A", "nope"],
            "--resume": None, "--allow-changes": None,
            "--data": ["digits", "digits:test", "@ROOT/folder", "nope", "", "@ROOT/samples.npz"],
            "--data_root": ["@ROOT", "@ROOT/nowhere"], "--resolution": ["8", "16", "3", "2000"],
            "--channels": ["1", "3", "2"], "--max_images": WHOLE, "--latent_channels": WHOLE, "--downsample": WHOLE,
            "--base_channels": WHOLE, "--num_blocks": WHOLE,
            "--channel_mults": ["1,2", "1,2,2", "(1,2,2)", "0,1", "1", "", "1,2,2,2,2,2,2,2,2", "1.5,2"],
            "--channel-mults": ["1,2", "x"], "--rec_loss": ["l1", "l2", "l3"],
            "--perceptual": ["none", "auto", "mnist-cnn", "efficientnet-lite0", "foo"],
            "--perceptual_weight": REAL, "--kl_weight": REAL, "--disc_weight": REAL, "--disc_start": WHOLE,
            "--steps": WHOLE, "--time_limit": REAL, "--batch": WHOLE, "--lr": REAL,
            "--betas": ["0.9,0.99", "0.9", "2,3", "0.5,1", "(0.9, 0.999)", "0.9,0.99,0.999", ""],
            "--warmup_steps": WHOLE, "--lr_decay": ["cosine", "linear", "constant", "step"], "--grad_clip": REAL,
            "--ema_decay": ["0", "0.999", "1", "1.5"], "--seed": WHOLE + ["4294967296"], "--log_every": WHOLE,
            "--checkpoint_every": WHOLE, "--keep_checkpoints": WHOLE, "--scale_images": WHOLE,
            "--out": OUT_DIRS + ["@AE"], "--device": DEVICES})


@pytest.fixture
def no_ae_training(monkeypatch):
    """train-autoencoder with its checks and the config's own, without the training."""
    import kuosan.latent
    import kuosan.training.autoencoder as tae

    seen = []

    def train(cfg, resume=False, allow_changes=False, **kw):
        tae._check(cfg)
        seen.append(cfg)
        return Path(cfg.out)

    monkeypatch.setattr(tae, "train_autoencoder", train)
    monkeypatch.setattr(kuosan.latent, "reconstruction_report", lambda out, *a, **k: None)
    return seen


def _ae_case(world, tmp_path, capsys, no_ae_training, argv):
    out = fresh(tmp_path)
    code, _, _ = door(["train-autoencoder", "--config", "digits-tiny", "--out", str(out), *_fill(argv, world, out)],
                      capsys)
    if code == 0 and not _helped(argv):
        cfg = no_ae_training[-1]
        assert all(math.isfinite(v) for v in (cfg.lr, cfg.kl_weight, cfg.perceptual_weight, *cfg.betas))


test_fuzz_train_autoencoder, test_fuzz_train_autoencoder_long = _fuzz(AE)(_ae_case)


LATENT_COMMON = {"--autoencoder": ["@AE", "@RUN", "@ROOT/nowhere", "@CKPT"],
                 "--data": ["digits", "digits:test", "@ROOT/folder", "@ROOT/samples.npz", "nope", ""],
                 "--data-root": ["@ROOT", "@ROOT/nowhere"], "--device": DEVICES}
PNG_OUT = ["@OUT.png", "@OUT/i.png", "i.txt", ".", "@RUN/checkpoints/i.png", ""]
LATENT_TOOLS = {
    "encode": {"--split": ["train", "test", "all", "bogus"]},
    "interpolate": {"--a": ["0", "1", "358", "359", "-1"], "--b": ["0", "1", "358", "359", "-1"],
                    "--steps": ["2", "8", "1024", "1025", "1"], "--slerp": None, "--out": PNG_OUT},
    "arithmetic": {"--add": ["1", "9", "10", "Sneaker", "-1"], "--subtract": ["2", "0", "12", "x"],
                   "--n": ["1", "6", "1024", "1025", "0"], "--images": ["0,5,9", "0,x", ",", "-1", "358", "359", ""],
                   "--out": PNG_OUT},
    "": {}, "bogus": {},
}
LATENT = st.sampled_from(sorted(LATENT_TOOLS)).flatmap(
    lambda tool: st.tuples(st.just(tool), argvs({**LATENT_COMMON, **LATENT_TOOLS[tool]})))


def _latent_case(world, tmp_path, capsys, argv):
    tool, rest = argv
    need = {"arithmetic": ["--add", "1", "--subtract", "2"]}.get(tool, [])
    out = fresh(tmp_path)
    given_tool = [tool, "--autoencoder", str(world["ae"])] if tool else []
    png = ["--out", f"{out}.png"] if tool in ("interpolate", "arithmetic") else []
    door(["latent", *given_tool, *need, *png, *_fill(rest, world, out)], capsys)


test_fuzz_latent, test_fuzz_latent_long = _fuzz(LATENT)(_latent_case)


ADAPTERS = ["@ADAPTER", "@ADAPTER:0.7", "@ADAPTER:-1", "@ADAPTER:nan", "@ADAPTER:inf", "@ADAPTER:1e9", "@ADAPTER:x",
            "@ADAPTER:", "@ROOT/adapter", "@ROOT/adapter.json", "@RUN", "@ROOT/nowhere", "@A"]
LORA = st.tuples(st.sampled_from(["info", "merge", "", "bogus"]),
                 argvs({"--checkpoint": ["@RUN", "@CKPT", "@AE", "@ROOT/nowhere"], "--adapter": ADAPTERS,
                        "--any-base": None, "--out": OUT_DIRS}, stray=ADAPTERS))


def _lora_case(world, tmp_path, capsys, argv):
    action, rest = argv
    out = fresh(tmp_path)
    rest = _fill(rest, world, out)
    if action == "info":
        full = ["lora", "info", *(rest or [str(world["adapter"])])]
    elif action == "merge":
        full = ["lora", "merge", "--checkpoint", str(world["run"]), "--adapter", str(world["adapter"]),
                "--out", str(out), *rest]
    else:
        full = ["lora", *([action] if action else []), *rest]
    code, _, _ = door(full, capsys)
    if code == 0 and action == "merge" and not _helped(rest):
        merged = kuosan.load(_last_value(full, "--out"), device="cpu")
        assert all(bool(torch.isfinite(p).all()) for p in merged.precond.parameters())


test_fuzz_lora, test_fuzz_lora_long = _fuzz(LORA)(_lora_case)


EVALUATE = argvs({
    "--images": ["@ROOT/samples.npz", "@ROOT/folder", "@ROOT/nowhere", "@A", "@ROOT/junk.json"],
    "--checkpoint": ["@RUN", "@CKPT", "@ROOT/nowhere", "@AE"],
    "--n": ["2", "8", "1000", "100001"], "--seeds": SEED_TEXT, "--sampler": SAMPLERS,
    "--steps": ["1", "2", "10001"], "--guidance": ["0", "1", "2", "100.5"], "--threshold": ["clip", "0.995", "1.5"],
    "--batch": ["1", "8", "65537"], "--bf16": None,
    "--reference": ["digits:test", "fashion-mnist:test", "mnist:test", "@ROOT/samples.npz", "@ROOT/folder", "nope",
                    ""],
    "--train-reference": ["none", "auto", "digits:train", "nope"],
    "--extractors": ["mnist-cnn", "fmnist-cnn", "inception", "efficientnet-lite0", "bogus", "mnist-cnn,mnist-cnn",
                     ","],
    "--inception-weights": ["@ROOT/nowhere.pth", "@A"], "--metrics-log": ["@RUN/metrics.jsonl", "@A", "@ROOT/nowhere"],
    "--out": OUT_DIRS, "--device": DEVICES, "--max-real": ["2", "100", "1", "0"], "--kid-subsets": ["1", "10", "0"],
    "--no-cache": None, "--no-plots": None})


@pytest.fixture
def no_metrics(monkeypatch):
    """kuosan evaluate up to its metrics: the report and its table are stubbed."""
    import kuosan.evaluation.render as render
    import kuosan.evaluation.report as report

    seen = []
    monkeypatch.setattr(report, "evaluate", lambda generated, reference=None, config=None, **kw:
                        seen.append((generated, reference)) or {})
    monkeypatch.setattr(render, "format_table", lambda rep, *a, **k: "")
    return seen


def _evaluate_case(world, tmp_path, capsys, no_metrics, argv):
    out = fresh(tmp_path)
    argv = _fill(argv, world, out)
    source = [] if {"--images", "--checkpoint"} & set(argv) else ["--images", str(world["root"] / "samples.npz")]
    door(["evaluate", *source, "--n", "8", "--steps", "2", "--batch", "8", "--out", str(out), *argv], capsys)


test_fuzz_evaluate, test_fuzz_evaluate_long = _fuzz(EVALUATE)(_evaluate_case)


@pytest.mark.parametrize("device", ["0", "x", "cuda:x"])
def test_evaluate_with_a_device_that_is_no_name(world, tmp_path, capsys, no_metrics, device):
    door(["evaluate", "--images", str(world["root"] / "samples.npz"), "--device", device, "--out",
          str(fresh(tmp_path))], capsys)


DEMO = argvs({"--minutes": ["10", "0.6", "0.5", "0.4", "1e9", "10080", "10081"], "--out": OUT_DIRS,
              "--data": ["digits", "fashion-mnist", "nope", ""], "--seed": ["0", "7", "4294967295", "4294967296"],
              "--no-eval": None, "--device": DEVICES})


@pytest.fixture
def no_demo(monkeypatch):
    import kuosan.demo

    seen = []
    monkeypatch.setattr(kuosan.demo, "run_demo", lambda **kw: seen.append(kw) or 0)
    return seen


def _demo_case(world, tmp_path, capsys, no_demo, argv):
    code, _, _ = door(["demo", *_fill(argv, world, fresh(tmp_path))], capsys)
    if code == 0 and no_demo:
        kw = no_demo[-1]
        assert kw["minutes"] is None or 0.5 < kw["minutes"] <= 7 * 24 * 60  # None: the data set's default
        assert 0 <= kw["seed"] < 2 ** 32


test_fuzz_demo, test_fuzz_demo_long = _fuzz(DEMO)(_demo_case)


BENCH = argvs({"--config": ["digits-tiny", "demo", "@RUN", "@CKPT/config.json", "@ROOT/junk.json", "@A", "nope"],
               "--batch": WHOLE, "--resolution": ["4", "8", "28", "3", "2000"], "--channels": ["1", "3", "5"],
               "--rounds": ["1", "5", "1001"], "--sample-steps": ["0", "10", "10001"],
               "--sample-rounds": ["1", "3", "0"], "--threads": ["1", "2", "0", "5000"],
               "--peers": ["none", "diffusers", "lucidrains-bf16", "diffusers,x", ",", ""],
               "--layouts": ["channels_last", "nchw", "nchw-bf16", "channels_last,nchw", "foo", ","],
               "--compile": None, "--bf16": None, "--skip-train": None, "--layers": None,
               "--out": ["@OUT.json", "b.txt", ".", "@RUN/checkpoints/b.json", ""]})


@pytest.fixture
def no_bench(monkeypatch):
    import kuosan.bench

    seen = []
    monkeypatch.setattr(kuosan.bench, "run", lambda args: seen.append(args) or 0)
    return seen


def _bench_case(world, tmp_path, capsys, no_bench, argv):
    code, _, _ = door(["bench", *_fill(argv, world, fresh(tmp_path))], capsys)
    if code == 0 and no_bench:
        a = no_bench[-1]
        assert a.batch >= 1 and a.resolution >= 4 and a.rounds >= 1 and a.sample_steps >= 0


test_fuzz_bench, test_fuzz_bench_long = _fuzz(BENCH)(_bench_case)


# --- the newer doors (distill, train-gan, count-modes, export, serve): options read from their parsers ----

def _options_of(*path) -> dict:
    """Every option of ``kuosan PATH``, with the hostile number/path pool (None for a flag)."""
    from kuosan.cli import build_parser

    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    out = {}
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--") and o != "--help"]
        if longs:
            out[longs[0]] = None if action.nargs == 0 else list(action.choices or []) + GENERIC_VALUES
    return out


GENERIC_VALUES = ["@RUN", "@CKPT", "@AE", "@ROOT/samples.npz", "@ROOT/folder", "@OUT", "@OUT.json", "digits",
                  "digits-tiny", "fashion-mnist", "stacked-mnist", "ect", "ct", "cpu", "1", "2", "8", "0.5", "0.08"]


@pytest.fixture
def no_long_work(monkeypatch):
    """distill, train-gan, export and serve after their checks: the training, the export and the web server
    are stubbed (the GAN config's own check still runs)."""
    import uvicorn

    import kuosan.interop.onnx as onnx
    import kuosan.training.distill as distill
    import kuosan.training.gan as gan

    seen = []
    monkeypatch.setattr(distill, "distill", lambda student, **kw: seen.append(student))
    monkeypatch.setattr(gan, "train_gan", lambda cfg, **kw: gan.check_config(cfg) or seen.append(cfg) or Path(cfg.out))
    monkeypatch.setattr(onnx, "export_onnx", lambda precond, out, **kw: seen.append(out) or
                        {"network": {"file": "network.onnx"}, "decoder": None, "precond": {"kind": "edm"}})
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.append(app))
    return seen


NEWER = st.sampled_from([("distill",), ("train-gan",), ("count-modes",), ("export",), ("serve",)]).flatmap(
    lambda path: st.tuples(st.just(path), argvs(_options_of(*path))))
NEEDS = {"distill": ["--teacher", "@RUN", "--steps", "2", "--out", "@OUT"],
         "train-gan": ["--config", "fashion-mnist", "--max_images", "64", "--out", "@OUT"],
         "count-modes": ["--images", "@ROOT/samples.npz"],
         "export": ["--onnx", "@OUT", "--checkpoint", "@RUN"], "serve": ["--checkpoint", "@RUN", "--out", "@OUT"]}


def _newer_case(world, tmp_path, capsys, no_long_work, argv):
    path, rest = argv
    door(["".join(path), *_fill(NEEDS[path[0]] + rest, world, fresh(tmp_path))], capsys)


test_fuzz_newer_doors, test_fuzz_newer_doors_long = _fuzz(NEWER, quick=10)(_newer_case)


@pytest.mark.parametrize("argv", [["sample", "--checkpoint", "a\nb"], ["data", "digits", "\ra"]])
def test_a_line_break_in_an_argument_stays_on_the_error_line(world, tmp_path, capsys, argv):
    door(_fill(argv, world, fresh(tmp_path)), capsys)


# --- the Python API: Pipeline.sample -----------------------------------------------------------------

@pytest.fixture(scope="module")
def pipe(world):
    return kuosan.load(world["run"], device="cpu")


CLASS_NAMES = ["zero", "one", "Sneaker", "Ankle boot", "3", "five", "six", "seven", "eight", "nine"]

HOSTILE = st.sampled_from([0, 1, 2, 3, -1, 2.0, 2.5, -0.5, math.nan, math.inf, -math.inf, 10 ** 30, 2 ** 63, True,
                           False, None, "2", "2.5", "nan", "", "x", b"2", [2], (), {}, {2: 3}, 1j,
                           np.int64(2), np.float32(2.0), np.float64(math.nan), np.array(2), np.array([2, 3]),
                           torch.tensor(2), torch.tensor(2.5), torch.tensor([1, 2]), torch.tensor(math.nan)])
SEEDS = HOSTILE | st.sampled_from(["0-3", "3", "1,5", "3-0", "-5", "0-99999", "a", [0, 1], [5], [0.5], [-1], [True],
                                   [2 ** 64], np.array([1, 2]), np.array([[1, 2]]), torch.tensor([1, 2]),
                                   range(3), range(10 ** 12), {1, 2}, (s for s in [1, 2])])
LABELS = HOSTILE | st.sampled_from(["Sneaker", "sneaker", "ankle boot", "3", " 3 ", "-1", "Boot", "five", ["Sneaker"],
                                    ["Sneaker", "five"], ["zero", 1], [1.0, 2.0], [None, None], np.array([1, 2]),
                                    np.array(["one", "nine"]), torch.tensor([1, 2]), 11, 10, -1, [10, 0], [[1], [2]]])
def mostly(valid, hostile=HOSTILE):
    """Valid values two times in three (so that the other arguments get checked too), else hostile ones."""
    ok = st.sampled_from(valid)
    return st.one_of(ok, ok, hostile)


API = st.fixed_dictionaries({}, optional={
    "seeds": mostly([2, 3, "0-3", [0, 5], np.array([1, 2]), torch.tensor([3, 4]), "7"], SEEDS),
    "class_labels": mostly([None, 3, "Sneaker", ["Sneaker", "five"], np.int64(2)], LABELS),
    "steps": mostly([1, 2, 3, "2", np.int64(2), 2.0]),
    "guidance": mostly([0, 1, 2.5, "3", np.float32(1.5), torch.tensor(2.0)]),
    "sampler": mostly(["heun", "euler", "ddim", "ddpm", "dpmpp_3m_sde", "unipc", "lms", "euler_ancestral"],
                      HOSTILE | st.sampled_from(["HEUN", "magic", "consistency"])),
    "schedule": mostly(["karras", "exponential", "log-snr", "polyexponential"], HOSTILE | st.just("vp-cosine")),
    "threshold": mostly(["clip", "none", 0.995, None, "0.9"], HOSTILE | st.sampled_from([1.0, 0.0])),
    "batch_size": mostly([1, 2, 64, np.int64(3), None]),
    "bf16": mostly([True, False, np.bool_(False), 0]),
    "progress": mostly([None, lambda done: None]),
    "sampler_options": mostly([None, {}], HOSTILE | st.sampled_from([{"bogus": 1}, {"eta": math.nan}, {"eta": 0.5},
                                                                     {"eta": "x"}, {2: 1}])),
})


def _api_case(pipe, monkeypatch, argv):
    monkeypatch.setattr(type(pipe), "class_names", property(lambda self: CLASS_NAMES))
    kw = dict(argv)
    kw.setdefault("seeds", 2)
    kw.setdefault("steps", 2)
    try:
        res = pipe.sample(**kw)
    except KuosanError as e:
        assert "\n" not in str(e) and str(e), repr(str(e))
        tally("Pipeline.sample", "one-line KuosanError")
        return
    except TooLong:
        tally("Pipeline.sample", "accepted (stopped by the forward budget)")
        return
    assert res.images.dtype == np.uint8 and res.images.shape[1:] == (8, 8, 1)
    assert len(res.images) == len(res.seeds) and all(isinstance(s, int) and 0 <= s < 2 ** 63 for s in res.seeds)
    if res.labels is not None:
        assert len(res.labels) == len(res.seeds) and ((0 <= res.labels) & (res.labels < 10)).all()
    tally("Pipeline.sample", "sampled (finite images)")


test_fuzz_pipeline_sample, test_fuzz_pipeline_sample_long = _fuzz(API, quick=30, long=2 * LONG)(_api_case)


# Doors that pipeline.py (not validation.py) has to close.

def test_api_batch_size_none_means_the_default(pipe):
    assert len(pipe.sample(2, steps=2, batch_size=None).images) == 2


@pytest.mark.parametrize("label", [torch.tensor(3), np.array(3)], ids=["tensor", "numpy"])
def test_api_class_label_as_a_0d_array(pipe, label):
    assert pipe.sample(2, label, steps=2).labels.tolist() == [3, 3]


@pytest.mark.parametrize("kw", [{"progress": 3}, {"bf16": "no"}])
def test_api_progress_and_bf16_are_checked(pipe, kw):
    with pytest.raises(KuosanError):
        pipe.sample(2, steps=2, **kw)


@pytest.mark.parametrize("options", [{"bogus": 1}, 3, {"eta": math.nan}])
def test_api_sampler_options_are_checked(pipe, options):
    with pytest.raises(KuosanError):
        pipe.sample(2, steps=2, sampler="ddim", sampler_options=options)


def test_api_adapter_weight_nan_is_refused(world):
    with pytest.raises(KuosanError):
        kuosan.load(world["run"], device="cpu", adapters=[(str(world["adapter"]), math.nan)])


# --- the Python API: editing functions ---------------------------------------------------------------

def _den(x, sigma, class_labels=None, **kw):
    """A smooth denoiser (the exact one of N(0.3, 0.25) data): finite in, finite out."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return 0.3 + 0.25 / (0.25 + sigma ** 2) * (x - 0.3)


SIGMAS = get_sigmas("karras", 4, 0.002, 80.0)
X = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
NUMBER = st.sampled_from([0, 1, 0.5, 0.01, 0.99, -0.1, 1.1, math.nan, math.inf, -math.inf, 10 ** 30, True, None, "0.5",
                          [0.5], np.float64(0.5), torch.tensor(0.5), torch.tensor([0.2, 0.8]), torch.tensor(math.nan)])
SIGMA_GRIDS = st.sampled_from([SIGMAS, SIGMAS.flip(0), SIGMAS[-1:], SIGMAS[-2:], SIGMAS * math.nan, -SIGMAS,
                               SIGMAS.tolist(), SIGMAS.reshape(1, -1), torch.zeros(0), None, "karras"])
MASKS = st.sampled_from([torch.ones(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), torch.full((1, 1, 8, 8), 0.5),
                         torch.ones(1, 1, 4, 4), torch.zeros(1, 3, 8, 8), torch.zeros(3, 1, 8, 8), torch.zeros(8, 8),
                         torch.full((1, 1, 8, 8), math.nan), torch.full((1, 1, 8, 8), 2.0), -torch.ones(1, 1, 8, 8),
                         torch.zeros(1, 1, 8, 8, dtype=torch.bool), np.zeros((1, 1, 8, 8)), [[0]], torch.tensor(0.0),
                         None])
COUNTS = st.sampled_from([1, 2, 3, 5, 0, -1, 2.5, math.nan, 10 ** 9, True, "2", None])
SAMPLER_NAMES = st.sampled_from(["euler", "heun", "ddpm", "ddim", "dpmpp_2m", "euler_ancestral", "lms", "unipc",
                                 "consistency", "nope", None, 3])
IMAGES = st.sampled_from([X, X[:1], X.double(), X * math.nan, X.to(torch.int64), X[0, 0, 0], X.numpy(), None])
GENERATORS = st.sampled_from([None, torch.Generator().manual_seed(0), "seed", 3,
                              [torch.Generator().manual_seed(i) for i in range(2)],
                              [torch.Generator().manual_seed(0)]])
EDITS = st.one_of(
    st.tuples(st.just("img2img"), IMAGES, SIGMA_GRIDS, NUMBER, SAMPLER_NAMES, GENERATORS),
    st.tuples(st.just("inpaint"), IMAGES, MASKS, SIGMA_GRIDS, SAMPLER_NAMES, COUNTS, COUNTS, GENERATORS),
    st.tuples(st.just("invert"), IMAGES, SIGMA_GRIDS, SAMPLER_NAMES),
    st.tuples(st.just("slerp"), IMAGES, IMAGES, NUMBER),
    st.tuples(st.just("class_mix"), st.sampled_from([torch.zeros(2, dtype=torch.long), torch.zeros(3, dtype=torch.long),
                                                     torch.zeros(2), [0, 0], None]), NUMBER),
    st.tuples(st.just("start_index"), COUNTS, NUMBER),
    st.tuples(st.just("repaint_path"), COUNTS, COUNTS, COUNTS),
    st.tuples(st.just("psnr"), IMAGES, IMAGES),
)


def _edit_api_case(argv):
    from kuosan.diffusion import editing as E

    kind, *a = argv
    calls = {
        "img2img": lambda x, s, strength, smp, g: E.img2img(_den, x, s, strength, sampler=smp, generator=g),
        "inpaint": lambda x, m, s, smp, r, j, g: E.inpaint(_den, x, m, s, sampler=smp, resample=r, jump=j, generator=g),
        "invert": lambda x, s, smp: E.invert(_den, x, s, sampler=smp),
        "slerp": lambda z0, z1, t: E.slerp(z0, z1, t),
        "class_mix": lambda labels, w: E.class_mix(lambda x, s, class_labels=None: _den(x, s), labels,
                                                    torch.ones(2, dtype=torch.long), w)(X, torch.tensor(1.0)),
        "start_index": lambda n, s: E.start_index(n, s),
        "repaint_path": lambda n, r, j: E.repaint_path(n, r, j),
        "psnr": lambda a, b: E.psnr(a, b),
    }
    try:
        out = calls[kind](*a)
    except KuosanError as e:
        assert "\n" not in str(e) and str(e), repr(str(e))
        tally(f"editing.{kind}", "one-line KuosanError")
        return
    if isinstance(out, torch.Tensor):
        assert bool(torch.isfinite(out).all()) or kind == "psnr", f"{kind} accepted its arguments and made NaNs"
    elif kind == "start_index":
        assert isinstance(out, int) and 0 <= out <= a[0]
    elif kind == "repaint_path":
        assert out[0] == 0 and out[-1] == a[0] and len(out) <= 10 ** 7
    tally(f"editing.{kind}", "accepted (a correct result)")


test_fuzz_editing_api, test_fuzz_editing_api_long = _fuzz(EDITS, quick=60, long=6 * LONG)(_edit_api_case)


@pytest.mark.parametrize("argv", [["demo", "--out", "runs/a\x00b"], ["demo", "--data", "digits", "--out", "\x00"]])
def test_a_nul_character_in_an_output_path_is_one_line(argv, capsys):
    """Found by test_fuzz_demo: a path with NUL reached Path.resolve, which raises ValueError."""
    code, _, err = door(argv, capsys)
    assert code == 2 and "NUL character" in err


@pytest.mark.parametrize("argv", [["demo", "--out", "~0"], ["data", "~no-such-user-here/x"],
                                  ["train", "--init-from", "~0/run", "--steps", "1"],
                                  ["train", "--config", "fashion-mnist", "--data_root", "~0", "--steps", "1"],
                                  ["train", "--config", "digits-tiny", "--out", "~0/run", "--steps", "1"],
                                  ["evaluate", "--images", "x.npz", "--reference", "digits", "--out", "~0/e"]])
def test_a_home_of_no_user_is_one_line(argv, capsys, tmp_path, monkeypatch):
    """Found by test_fuzz_demo_long: ``~0`` made Path.expanduser raise RuntimeError (--out of demo, then
    --init-from, --data_root and evaluate's --out, which still reached it)."""
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 8, 8, 1), np.uint8))
    code, _, err = door(argv, capsys)
    assert code == 2 and "names no user on this machine" in err, err


def test_a_sources_directory_of_no_user_is_one_line(monkeypatch):
    from kuosan.data import emoji_sources

    monkeypatch.setenv(emoji_sources.SOURCES_ENV, "~0/sources")
    with pytest.raises(KuosanError, match="the emoji sources directory '~0/sources': ~0 names no user"):
        emoji_sources.sources_dir()


def test_a_cache_of_no_user_is_one_line(monkeypatch, capsys, tmp_path):
    """$KUOSAN_CACHE went through a bare Path.expanduser at six places (data sets, latents, reference
    features, ONNX exports): ``~0`` raised RuntimeError. A ``~`` of this user still expands, for the compiled
    kernels' cache too, which did not expand it at all."""
    from pathlib import Path

    from kuosan.errors import cache_root
    from kuosan.nets import kernels

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KUOSAN_EMOJI_SOURCES", raising=False)
    monkeypatch.setenv("KUOSAN_CACHE", "~0/cache")
    with pytest.raises(KuosanError, match=r"\$KUOSAN_CACHE '~0/cache': ~0 names no user"):
        cache_root("latents")
    code, _, err = door(["data", "emoji"], capsys)
    assert code == 2 and "$KUOSAN_CACHE '~0/cache': ~0 names no user" in err, err
    monkeypatch.setenv("KUOSAN_CACHE", "~/kc")
    assert cache_root("eval") == Path.home() / "kc" / "eval"
    assert kernels._cache_dir() == Path.home() / "kc" / "kernels"   # was a folder named "~" in the cwd
    monkeypatch.delenv("KUOSAN_CACHE")
    assert cache_root() == Path.home() / ".cache" / "kuosan"
