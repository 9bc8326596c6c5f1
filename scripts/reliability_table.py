"""Inject faults into kuosan and report what survived, as a Markdown table.

    OMP_NUM_THREADS=1 python scripts/reliability_table.py                 # 10 SIGKILLs, ~5 minutes on 2 cores
    OMP_NUM_THREADS=1 python scripts/reliability_table.py --kills 2 --fuzz 50 --out /tmp/r.md   # a quick look

Faults: SIGKILL at random moments of training then ``--resume`` (compared bit for bit with an
uninterrupted run), SIGTERM, damaged checkpoints (truncated, bit-flipped, deleted files, edited
state, garbage ``latest``, a crash mid-write), pickles planted as checkpoints, NaN losses and
gradients, bad image files, bad configs and commands (listed, then fuzzed). The fault-injection
code lives in the tests (tests/test_*.py), which this script imports; each row names the command
that reproduces it. Writes ``benchmarks/results/reliability.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import pytest  # noqa: E402  (MonkeyPatch for the in-process injections)
import torch  # noqa: E402

torch.set_num_threads(1)

import test_checkpoint as tc  # noqa: E402
import test_resume as tr  # noqa: E402
from kuosan.cli import main  # noqa: E402
from kuosan.errors import KuosanError  # noqa: E402
from kuosan.checkpoint import resolve_checkpoint  # noqa: E402

ROWS: list[tuple[str, str, str, str]] = []  # (fault, runs, outcome, reproduce)
TMP: list[str] = []                           # the scratch directory, shown as DIR


def row(fault, runs, outcome, command):
    for tmp in TMP:
        outcome = outcome.replace(tmp, "DIR")
    ROWS.append((fault, str(runs), outcome.replace("|", "\\|"), f"`{command}`"))
    print(f"  {fault}: {outcome}", file=sys.stderr, flush=True)


def quiet_main(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


# --- crashes ---------------------------------------------------------------------------------------

def kills(tmp: Path, n: int, seed: int) -> None:
    steps = 90
    t0 = time.time()
    (tmp / "kills").mkdir()
    report = tr._check_kill_run(tmp / "kills", steps, kills=n, seed=seed)
    phases = Counter(k["phase"] for k in report.kills)
    lost = [k["checkpoint_after"] for k in report.kills]
    row("SIGKILL at a random moment of training, then `--resume`", f"{n} kills",
        f"resumed every time ({report.resumes} resumes); kills landed in "
        + ", ".join(f"{v} {k}" for k, v in sorted(phases.items()))
        + f"; final weights, EMA, optimiser, RNG, data position, metrics and samples bit-identical to an "
          f"uninterrupted run ({steps} steps, {time.time() - t0:.0f} s; checkpoints at kill: {lost})",
        f"python tests/test_resume.py --kills {n} --steps {steps} --seed {seed}")


def sigterm(tmp: Path) -> None:
    steps = tr.FAST_STEPS
    ref = tmp / "term-ref"
    ref.mkdir()
    assert tr.run_training(ref / "run", steps).returncode == 0
    out = tmp / "term" / "run"
    out.parent.mkdir()
    stopped, _ = tr.sigterm_then_resume(out, steps)
    tr.assert_same_run(ref / "run", out, steps)
    row("SIGTERM during training", 1,
        f"checkpoint written at the current step ({stopped}), exit 130; `--resume` bit-identical",
        "pytest -m slow tests/test_resume.py -k sigterm")


# --- checkpoint damage -----------------------------------------------------------------------------

def damage(tmp: Path) -> None:
    results = []
    cases = dict(tc.DAMAGE)
    for i, (case, (name, hurt, _)) in enumerate(sorted(cases.items())):
        run = _tiny_run(tmp / f"dmg{i}")
        hurt(run / "checkpoints" / "step-0000030" / name)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            got = resolve_checkpoint(run, require_state=True)
        results.append((case, got.name == "step-0000020" and any("skipping damaged" in str(x.message) for x in w)))
    ok = sum(r for _, r in results)
    row("Newest checkpoint damaged: " + ", ".join(c for c, _ in results), len(results),
        f"{ok}/{len(results)} fell back to the previous intact checkpoint with a one-line warning",
        "pytest tests/test_checkpoint.py -k damaged")

    run = _tiny_run(tmp / "latest")
    (run / "checkpoints" / "latest").write_bytes(b"\x00garbage")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        name = resolve_checkpoint(run).name
    tmpdir = _tiny_run(tmp / "tmpdir")
    (tmpdir / "checkpoints" / ".tmp-step-0000040-1").mkdir()
    name2 = resolve_checkpoint(tmpdir).name
    row("Garbage `latest` pointer; leftover `.tmp-*` directory from a crash mid-write", 2,
        f"newest intact checkpoint used ({name}, {name2}); the next save removes the leftover",
        "pytest tests/test_checkpoint.py -k 'latest or leftover'")

    outcome = []
    for test in (tc.test_crash_before_the_rename_keeps_the_previous_checkpoint,
                 tc.test_crash_between_rename_and_pointer_uses_the_complete_newer_checkpoint):
        mp = pytest.MonkeyPatch()
        try:
            test(_tiny_run(tmp / test.__name__), mp)
            outcome.append("ok")
        finally:
            mp.undo()
    row("Crash inside `save_checkpoint` (before the rename; between rename and `latest`)", 2,
        "previous checkpoint kept / complete new one used: " + ", ".join(outcome),
        "pytest tests/test_checkpoint.py -k crash")

    run = _tiny_run(tmp / "all")
    for ckpt in tc.list_checkpoints(run):
        tc._truncate(ckpt / "model.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            resolve_checkpoint(run)
            outcome = "loaded (wrong!)"
        except KuosanError as e:
            outcome = f"one-line error: `{e}`"
    row("Every checkpoint damaged", 1, outcome, "pytest tests/test_checkpoint.py -k every_checkpoint")


def _tiny_run(path: Path) -> Path:
    precond, config = tc.tiny_model()
    opt = tc.optimiser_after_one_step(precond)
    for step in (10, 20, 30):
        tc.save(path, step, precond, config, opt)
    return path


# --- safe loading ----------------------------------------------------------------------------------

def pickles(tmp: Path) -> None:
    import test_safety as ts

    n = 0
    for which in ("model.safetensors", "ema.safetensors"):
        for forged in (False, True):
            d = tmp / f"pk{n}"
            d.mkdir()
            _pickle_case(ts, d, which, forged)
            n += 1
    for test in (ts.test_an_exported_pickle_checkpoint_is_refused_by_name,
                 ts.test_pickles_beside_a_good_checkpoint_are_never_opened):
        d = tmp / test.__name__
        d.mkdir()
        test(d)
        n += 1
    row("Malicious pickle planted as `model.safetensors`/`ema.safetensors` (checksums forged or not), "
        "as `model.pt`/`ema.pkl`, or beside a good checkpoint", n,
        "refused with a one-line KuosanError (or never opened); the pickle's payload never ran",
        "pytest tests/test_safety.py")


def _pickle_case(ts, d, which, forged):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ckpt = ts._checkpoint(d)
        marker = d / "pwned"
        (ckpt / which).write_bytes(ts._malicious_pickle(marker))
        if forged:
            ts._rewrite_state(ckpt)
        import kuosan

        for path in (ckpt, ckpt.parent.parent):
            try:
                kuosan.load(path, use_ema=which == "ema.safetensors")
                raise AssertionError("a pickle was loaded")
            except KuosanError:
                pass
        assert not marker.exists()


# --- numerical faults ------------------------------------------------------------------------------

def numerics(tmp: Path) -> None:
    import test_numerics as tn

    out = tmp / "nan" / "run"
    assert quiet_main([*tn.ARGS, "--steps", "6", "--out", str(out)])[0] == 0
    results = []
    for kind in ("loss", "gradient"):
        before = tn._bytes(out)
        mp = pytest.MonkeyPatch()
        try:
            tn.faulty_objective(mp, bad_steps=range(1000), kind=kind)
            code, stdout, stderr = quiet_main([*tn.ARGS, "--steps", "20", "--max_nonfinite", "3", "--out", str(out),
                                               "--resume"])
        finally:
            mp.undo()
        results.append(code == 2 and len(stderr.strip().splitlines()) == 1 and tn._bytes(out) == before)
        message = stderr.strip()
    row("NaN loss / NaN gradients at every step (`train.max_nonfinite` 3)", 2,
        f"each fault skipped and counted; stopped with exit 2 and one line; last checkpoint byte-identical: "
        f"{sum(results)}/2. Message: \"{message[:150]}...\"",
        "pytest tests/test_numerics.py")
    mp = pytest.MonkeyPatch()
    try:
        tn.faulty_objective(mp, bad_steps={4})
        code, stdout, _ = quiet_main([*tn.ARGS, "--steps", "6", "--out", str(tmp / "nan1" / "run")])
    finally:
        mp.undo()
    state = json.loads((tmp / "nan1" / "run" / "checkpoints" / "step-0000006" / "state.json").read_text())
    row("One NaN loss in a run", 1, f"step skipped, counted (nonfinite = {state['nonfinite']}), training finished "
        f"(exit {code})", "pytest tests/test_numerics.py -k single")


# --- bad data, configs and commands ---------------------------------------------------------------

def bad_data(tmp: Path) -> None:
    import subprocess

    import test_cli_errors as tce

    data = tce._image_folder(tmp / "data")
    (data / "a" / "zero.png").write_bytes(b"")
    good = (data / "a" / "0.png").read_bytes()
    (data / "a" / "truncated.png").write_bytes(good[: len(good) // 2])
    (data / "b" / "text.png").write_text("not a picture\n" * 10)
    res = subprocess.run([sys.executable, "-m", "kuosan", "train", "--config", "digits-tiny", "--data", str(data),
                          "--resolution", "8", "--steps", "2", "--batch", "4", "--sample.steps", "2",
                          "--out", str(tmp / "data-run")], env=tr.child_env(), capture_output=True, text=True,
                         timeout=600, cwd=tmp)
    skipped = sum(ln.startswith("skipping ") for ln in res.stderr.splitlines())
    row("Image folder with a zero-byte file, a truncated PNG and a text file named .png", 3,
        f"trained (exit {res.returncode}); {skipped} one-line skip messages and a summary",
        "pytest tests/test_cli_errors.py -k bad_files")
    (tmp / "empty").mkdir()
    code, _, err = quiet_main(["train", "--config", "digits-tiny", "--data", str(tmp / "empty"), "--out",
                               str(tmp / "e")])
    row("Empty image folder", 1, f"exit {code}: `{err.strip()}`", "pytest tests/test_cli_errors.py -k empty")


BAD_COMMANDS = [
    ["train", "--config", "digits-tiny", "--steps", "-5"],
    ["train", "--config", "digits-tiny", "--batch", "0"],
    ["train", "--config", "digits-tiny", "--batch", "10000000"],
    ["train", "--config", "digits-tiny", "--resolution", "3"],
    ["train", "--config", "digits-tiny", "--guidance", "1000"],
    ["train", "--config", "digits-tiny", "--lr", "inf"],
    ["train", "--config", "digits-tiny", "--stepz", "5"],
    ["train", "--config", "digits-tiny", "--model.kind", "transformer"],
    ["train", "--config", "digits-tiny", "--sampler", "magic"],
    ["train", "--config", "no-such-config.yaml"],
    ["train", "--config", "digits-tiny", "--data", "/no/such/folder"],
    ["train", "--config", "digits-tiny", "--device", "tpu"],
    ["sample", "--checkpoint", "/no/such/run"],
]


def bad_commands(tmp: Path, fuzz: int) -> None:
    import test_cli_errors as tce
    import test_config as tcf

    results = []
    for argv in BAD_COMMANDS:
        code, _, err = quiet_main([*argv[:1], *argv[1:], *(["--out", str(tmp / "x")] if argv[0] == "train" else [])])
        results.append(code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("kuosan: error: "))
    row("Bad commands: negative/absurd steps, batch, resolution, guidance, lr; unknown keys and choices; "
        "missing config, data, checkpoint; unknown device", len(BAD_COMMANDS),
        f"{sum(results)}/{len(BAD_COMMANDS)} exit 2 with one `kuosan: error:` line naming the problem",
        "pytest tests/test_config.py tests/test_cli_errors.py")

    run = tmp / "arch" / "run"
    quiet_main(["train", *tce.TINY, "--steps", "2", "--checkpoint_every", "1", "--out", str(run)])
    code1, _, err1 = quiet_main(["train", *tce.TINY, "--out", str(run), "--resume", "--model.base_channels", "8"])
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as buf:
        try:
            (tmp / "arch-s").mkdir()
            tce.test_sample_weights_that_do_not_match_their_config(run, tmp / "arch-s", _Capsys(buf))
            ok2 = True
        except AssertionError:
            ok2 = False
    row("Checkpoint of another architecture: resume with another `--model.base_channels`; sample weights that "
        "do not fit their config.json", 2,
        f"exit {code1}: `...{err1.strip()[err1.find('has another'):][:95]}...`; sample: exit 2 naming the first "
        f"mismatched tensor "
        f"({'ok' if ok2 else 'FAILED'})", "pytest tests/test_cli_errors.py -k architecture")

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from kuosan.config import config_from_dict, load_config

    def from_dict(d):
        tcf._only_kuosan_errors(config_from_dict, d)

    def from_overrides(argv):
        tcf._only_kuosan_errors(load_config, None, argv)

    fuzzes = {
        "config_from_dict(random dict)": (tcf._configs, from_dict),
        "config_from_dict(known sections)": (
            st.dictionaries(st.sampled_from(list(tcf.SECTIONS)), tcf._sections, max_size=4), from_dict),
        "load_config(overrides)": (st.lists(tcf._token, max_size=8), from_overrides),
    }
    failures = []
    for name, (strategy, body) in fuzzes.items():
        try:
            settings(max_examples=fuzz, deadline=None, database=None)(given(strategy)(body))()
        except Exception as e:  # noqa: BLE001 - a falsifying example
            failures.append(f"{name}: {type(e).__name__}")
    row("Fuzzed configs: random dicts, sections and override lists into `config_from_dict`/`load_config`",
        f"3 × {fuzz}", "only KuosanError escaped" if not failures else "FAILED: " + "; ".join(failures),
        "pytest tests/test_config.py -k fuzz")

    seen = []
    mp = pytest.MonkeyPatch()
    mp.setattr(tce.loop, "train", lambda cfg, resume=False, **kw: seen.append(cfg) or Path(cfg.train.out))

    def one_argv(argv):
        code, _, err = quiet_main(["train", *argv])
        assert isinstance(code, int) and (code in (0, 2))
        assert code != 2 or err.startswith(("kuosan: error: ", "usage: "))

    try:
        settings(max_examples=fuzz, deadline=None, database=None)(given(st.lists(tce._train_tokens, max_size=7))(
            one_argv))()
        outcome = "every call returned 0 or 2 (one `kuosan: error:` line or argparse usage); nothing else raised"
    except Exception as e:  # noqa: BLE001
        outcome = f"FAILED: {type(e).__name__}: {str(e)[:80]}"
    finally:
        mp.undo()
    row("Fuzzed `kuosan train` argv (training stubbed out)", fuzz, outcome,
        "pytest tests/test_cli_errors.py -k fuzz_train")


class _Capsys:
    """Enough of pytest's capsys for the imported tests: readouterr() of a StringIO."""

    def __init__(self, buf):
        self.buf = buf

    def readouterr(self):
        text = self.buf.getvalue()
        self.buf.seek(0)
        self.buf.truncate()
        return type("Captured", (), {"out": "", "err": text})()


def main_script() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=10, help="SIGKILLs in the kill-and-resume run (default 10)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    ap.add_argument("--fuzz", type=int, default=300, help="examples per fuzz test (default 300)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reliability.md"))
    a = ap.parse_args()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        TMP.extend([str(tmp), str(tmp.resolve())])
        os.chdir(tmp)  # nothing the faults write lands in the repository
        for name, fn in (("kills", lambda: kills(tmp, a.kills, a.seed)), ("sigterm", lambda: sigterm(tmp)),
                         ("damage", lambda: damage(tmp)), ("pickles", lambda: pickles(tmp)),
                         ("numerics", lambda: numerics(tmp)), ("data", lambda: bad_data(tmp)),
                         ("commands", lambda: bad_commands(tmp, a.fuzz))):
            print(f"{name}...", file=sys.stderr, flush=True)
            fn()
    lines = ["| fault injected | runs | survived / outcome | reproduce |", "|---|---|---|---|"]
    lines += [f"| {f} | {r} | {o} | {c} |" for f, r, o, c in ROWS]
    lines += ["", f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} Linux, "
                  f"{os.cpu_count()} cores, torch {torch.__version__}, CPU, OMP_NUM_THREADS=1; "
                  f"{time.time() - t0:.0f} s in all. Produced by `python scripts/reliability_table.py "
                  f"--kills {a.kills} --seed {a.seed} --fuzz {a.fuzz}`."]
    table = "\n".join(lines) + "\n"
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(table)
    print(table)


if __name__ == "__main__":
    main_script()
