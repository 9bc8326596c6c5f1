"""Inject faults into kuosan and report what survived, as a Markdown table.

    OMP_NUM_THREADS=1 python scripts/reliability_table.py            # the full table (~25 minutes on 2 busy cores)
    OMP_NUM_THREADS=1 python scripts/reliability_table.py --quick    # every row, fewer cases (~5 minutes)
    OMP_NUM_THREADS=1 python scripts/reliability_table.py --kills 2 --fuzz 50 --out /tmp/r.md   # choose the counts

Faults: SIGKILL at random moments of training then ``--resume`` (compared bit for bit with an
uninterrupted run), SIGTERM, damaged checkpoints (truncated, bit-flipped, deleted files, edited
state, garbage ``latest``, a crash mid-write), pickles planted as checkpoints, NaN losses and
gradients, bad image files, bad configs and commands (listed, then fuzzed), every door of the command
line and the Python API fuzzed (tests/test_fuzz_doors.py), two ``kuosan train`` processes on one run,
a full disk or an interrupt at every write of a checkpoint and of samples (tests/test_faults.py),
hostile files inside checkpoints (tests/test_confinement.py), and the README's commands against
today's options. The fault-injection code lives in the tests (tests/test_*.py), which this script
imports or runs; each row names the command that reproduces it. Writes
``benchmarks/results/reliability.md`` and prints the table.
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


# --- every door, fuzzed --------------------------------------------------------------------------

DOOR_TESTS = {  # test in tests/test_fuzz_doors.py -> the doors it fuzzes
    "test_fuzz_sample_long": "kuosan sample", "test_fuzz_edit_long": "kuosan edit",
    "test_fuzz_data_long": "kuosan data", "test_fuzz_train_autoencoder_long": "kuosan train-autoencoder",
    "test_fuzz_latent_long": "kuosan latent", "test_fuzz_lora_long": "kuosan lora",
    "test_fuzz_evaluate_long": "kuosan evaluate", "test_fuzz_demo_long": "kuosan demo",
    "test_fuzz_bench_long": "kuosan bench", "test_fuzz_pipeline_sample_long": "Pipeline.sample",
    "test_fuzz_editing_api_long": "editing",
    "test_fuzz_newer_doors_long": ("kuosan distill", "kuosan train-gan", "kuosan count-modes", "kuosan export",
                                   "kuosan serve"),
}
SILENT = ("NaN or infinite", "made NaNs")  # the guards' messages: an accepted request with a wrong result


def _pytest(args: list[str], tmp: Path, env: dict | None = None, timeout: float = 3000) -> dict:
    """Run pytest in a child process; {test function: [(outcome, message), ...]} from its JUnit XML."""
    import subprocess
    import xml.etree.ElementTree as ET

    xml = tmp / f"junit-{len(list(tmp.glob('junit-*')))}.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *args]
    subprocess.run(cmd, cwd=ROOT, env={**tr.child_env(), **(env or {})}, capture_output=True, text=True,
                   timeout=timeout)
    results: dict[str, list] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = case.get("name").split("[")[0]
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        outcome = "skipped" if case.find("skipped") is not None else "failed" if bad is not None else "passed"
        message = (bad.get("message") or "") if bad is not None else ""
        if outcome == "skipped":
            message = case.find("skipped").get("message") or ""
        results.setdefault(name, []).append((outcome, message))
    return results


def fuzz_doors(tmp: Path, examples: int) -> None:
    tally_file = tmp / "tally.json"
    t0 = time.time()
    results = _pytest(["-m", "slow", "tests/test_fuzz_doors.py", "-k", "long"], tmp,
                      env={"KUOSAN_FUZZ_EXAMPLES": str(examples), "KUOSAN_FUZZ_TALLY": str(tally_file)})
    tally = json.loads(tally_file.read_text()) if tally_file.exists() else {}
    for test, doors in DOOR_TESTS.items():
        doors = (doors,) if isinstance(doors, str) else doors
        outcomes = results.get(test, [("failed", "did not run")])
        counts, subs = Counter(), set()
        for name, c in tally.items():
            door = next((d for d in doors if name == d or name.startswith((d + " ", d + "."))), None)
            if door is not None:
                counts.update(c)
                subs.add(name[len(door):].strip(" ."))
        failed = [m for o, m in outcomes if o == "failed"]
        silent = sum(any(w in m for w in SILENT) for m in failed)
        shown = ", ".join(f"{v} {k}" for k, v in counts.most_common())
        subs.discard("")
        what = ", ".join(f"`{d}`" for d in doors) + (f" ({', '.join(sorted(subs))})" if subs else "")
        row(f"Fuzzed {what}: hostile numbers (NaN, inf, negative, huge, fractional), names, paths, types",
            sum(counts.values()),
            f"tracebacks {len(failed) - silent}, silent wrong results {silent}; {shown}"
            + (f". FAILED: {failed[0][:150]}" if failed else ""),
            f"KUOSAN_FUZZ_EXAMPLES={examples} pytest -m slow tests/test_fuzz_doors.py -k {test}")
    print(f"  (fuzzed doors in {time.time() - t0:.0f} s)", file=sys.stderr)


# --- two writers on one run ----------------------------------------------------------------------

WRITER_ARGS = ["--config", "digits-tiny", "--batch", "8", "--max_images", "100", "--steps", "3",
               "--checkpoint_every", "1", "--sample.sampler", "euler", "--sample.steps", "1"]


def _intact(run: Path) -> str:
    """'' if ``run`` is one whole run (its checkpoint, config, metrics and history readable and from one
    writer), else what is wrong."""
    import kuosan

    try:
        ckpt = resolve_checkpoint(run, require_state=True)
        state = json.loads((ckpt / "state.json").read_text())
        json.loads((run / "config.json").read_text())
        steps = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        for ln in (run / "history.jsonl").read_text().splitlines():
            json.loads(ln)
        kuosan.load(run, device="cpu")
    except Exception as e:  # noqa: BLE001 - any of it is a corrupted run
        return f"{type(e).__name__}: {e}"
    if steps != sorted(set(steps)):
        return f"metrics steps from two writers: {steps}"
    if state.get("step") != 3:
        return f"stopped at step {state.get('step')}"
    return ""


def writers(tmp: Path, attempts: int) -> None:
    import subprocess

    corrupted, refused, problems = 0, Counter(), []
    t0 = time.time()
    for i in range(attempts):
        run = tmp / f"writers{i}" / "run"
        run.parent.mkdir()
        cmd = [sys.executable, "-m", "kuosan", "train", *WRITER_ARGS, "--out", str(run)]
        procs = [subprocess.Popen(cmd, env=tr.child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, cwd=run.parent) for _ in range(2)]
        outs = [p.communicate(timeout=600) for p in procs]
        codes = sorted(p.returncode for p in procs)
        losers = [err for p, (_, err) in zip(procs, outs) if p.returncode != 0]
        bad = "" if codes == [0, 2] else f"exit codes {codes}"
        for err in losers:
            lines = err.strip().splitlines()
            errors = [ln for ln in lines if ln.startswith("kuosan: error: ")]
            if len(errors) != 1 or lines[-1] != errors[0] or "Traceback" in err:
                bad = bad or f"refused without one error line: {err.strip()[-200:]}"
            elif "in use by another kuosan process" in errors[0]:
                refused["the lock (in use by pid N)"] += 1
            elif "already holds a training run" in errors[0]:
                refused["after the winner finished (pass --resume)"] += 1
            else:
                refused[errors[0][15:70]] += 1
        bad = bad or _intact(run)
        if bad:
            corrupted += 1
            problems.append(bad)
    row("Two `kuosan train` processes started together on one `--out`", f"{attempts} attempts",
        f"corrupted runs {corrupted}; each time one trained and the other exited 2 with one line, refused by "
        + ", ".join(f"{k} ×{v}" for k, v in refused.items())
        + f"; the run's checkpoint, config, metrics and history intact and from one writer ({time.time() - t0:.0f} s)"
        + (f". PROBLEMS: {problems[:2]}" if problems else ""),
        "pytest -m slow tests/test_rundir.py -k 20_times")


# --- a full disk, an interrupt, hostile files ------------------------------------------------------

FAULT_ROWS = [  # (tests in tests/test_faults.py, what is injected, what must hold)
    (("test_disk_full_at_every_write_of_a_checkpoint",),
     "Disk full (ENOSPC) at each write call of a checkpoint (open, write, fsync, replace, mkdir of every file, "
     "the folder and `latest`)",
     "one-line error; previous checkpoint untouched, no temporary file left, the next save succeeds"),
    (("test_disk_full_at_every_write_of_a_re_saved_step_keeps_the_old_one",),
     "Disk full at each write call when a resumed run saves the same step again (the swap)",
     "one-line error; the old copy of the step kept"),
    (("test_keyboard_interrupt_at_every_write_of_a_checkpoint",),
     "Ctrl-C (KeyboardInterrupt) at each write call of a checkpoint",
     "previous or new checkpoint whole; no temporary file left"),
    (("test_quota_read_only_and_other_errors_are_one_line_too", "test_a_read_only_run_directory"),
     "Quota exceeded, read-only file system, I/O error at a checkpoint's files; a read-only run directory",
     "one line naming the cause and the fix; nothing half-written"),
    (("test_a_crash_in_the_middle_of_the_swap",), "A crash between moving a step aside and renaming its new copy",
     "the next save puts the old copy back"),
    (("test_a_really_full_tmpfs",), "A really full 2 MB tmpfs during a checkpoint, sampling and the latent cache",
     "one-line error, previous state kept (skipped without root or mount)"),
    (("test_disk_full_at_every_write_of_samples", "test_keyboard_interrupt_at_every_write_of_samples",
      "test_save_png_on_a_full_disk", "test_interrupts_at_random_moments", "test_sigterm_at_random_moments"),
     "Disk full or Ctrl-C at each write call of `kuosan sample`'s files; SIGINT/SIGTERM at random moments",
     "only complete PNGs and .npz left, one-line error"),
    (("test_a_latent_cache_write_that_fails", "test_a_latent_cache_interrupted"),
     "A failing or interrupted write of the latent cache", "a one-line warning, training goes on; no temporary file"),
]


def _summary(cases: list) -> str:
    c = Counter(o for o, _ in cases)
    text = f"{c['passed']}/{len(cases)} held"
    if c["skipped"]:
        text += f" ({c['skipped']} skipped: {cases[[o for o, _ in cases].index('skipped')][1][:60]})"
    failed = [m for o, m in cases if o == "failed"]
    return text + (f"; FAILED: {failed[0][:150]}" if failed else "")


def faults(tmp: Path) -> None:
    if not (ROOT / "tests" / "test_faults.py").exists():
        row("Disk full during a checkpoint", 0, "tests/test_faults.py is missing", "pytest tests/test_faults.py")
        return
    results = _pytest(["tests/test_faults.py"], tmp)
    for names, what, must in FAULT_ROWS:
        cases = [c for test, cs in results.items() if test.startswith(names) for c in cs]
        if cases:
            row(what, f"{len(cases)} fault points" if len(names) == 1 and "every" in names[0] else len(cases),
                f"{must}: {_summary(cases)}", f"pytest tests/test_faults.py -k {names[0].removeprefix('test_')}")
    results = _pytest(["tests/test_confinement.py"], tmp)
    cases = [c for cs in results.values() for c in cs]
    row("Hostile files inside a checkpoint: `..`, absolute and odd names in state.json, symlinks out of the run "
        "(to /etc/passwd, to valid files with forged checksums), FIFOs, device files, a `latest` pointer or a step "
        "folder linked out of the run, lying safetensors headers and sizes, huge JSON", len(cases),
        f"refused with one line, nothing outside the run read, no hang: {_summary(cases)}",
        "pytest tests/test_confinement.py")


# --- the README's commands ------------------------------------------------------------------------

def readme(tmp: Path) -> None:
    import shlex

    import test_architecture as ta
    from torch.distributed.run import get_args_parser

    from kuosan.cli import build_parser

    bad = []
    commands = ta._readme_commands()
    for words in commands:
        path, _ = ta._help_of(words)
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                _, extra = build_parser().parse_known_args(words)
        except SystemExit:
            bad.append(" ".join(words))
            continue
        if not path or (extra and words[0] != "train"):
            bad.append(" ".join(words))
    torchrun = [ln.strip() for ln in (ROOT / "README.md").read_text().splitlines() if ln.strip().startswith("torchrun ")]
    for line in torchrun:
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                get_args_parser().parse_args(shlex.split(line.split("  #")[0])[1:])
        except SystemExit:
            bad.append(line)
    row("The README's commands (shell blocks) against today's options; its torchrun lines against torchrun's "
        "parser", len(commands) + len(torchrun),
        f"{len(commands) + len(torchrun) - len(bad)} parse" + (f"; do not: {bad[:3]}" if bad else "")
        + "; every example in every --help runs in `pytest -m slow tests/test_help_examples.py`",
        "pytest tests/test_architecture.py -k readme")


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
    ap.add_argument("--doors", type=int, default=100, help="fuzzed examples per door (default 100)")
    ap.add_argument("--writers", type=int, default=20, help="attempts of two writers on one run (default 20)")
    ap.add_argument("--quick", action="store_true",
                    help="every row with fewer cases (~5 minutes): --kills 2 --fuzz 40 --doors 15 --writers 4")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reliability.md"))
    a = ap.parse_args()
    if a.quick:
        a.kills, a.fuzz, a.doors, a.writers = 2, 40, 15, 4
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        TMP.extend([str(tmp), str(tmp.resolve())])
        os.chdir(tmp)  # nothing the faults write lands in the repository
        for name, fn in (("kills", lambda: kills(tmp, a.kills, a.seed)), ("sigterm", lambda: sigterm(tmp)),
                         ("damage", lambda: damage(tmp)), ("pickles", lambda: pickles(tmp)),
                         ("numerics", lambda: numerics(tmp)), ("data", lambda: bad_data(tmp)),
                         ("commands", lambda: bad_commands(tmp, a.fuzz)),
                         ("doors", lambda: fuzz_doors(tmp, a.doors)), ("writers", lambda: writers(tmp, a.writers)),
                         ("faults", lambda: faults(tmp)), ("readme", lambda: readme(tmp))):
            print(f"{name}...", file=sys.stderr, flush=True)
            fn()
    lines = ["| fault injected | runs | survived / outcome | reproduce |", "|---|---|---|---|"]
    lines += [f"| {f} | {r} | {o} | {c} |" for f, r, o, c in ROWS]
    lines += ["", f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} Linux, "
                  f"{os.cpu_count()} cores, torch {torch.__version__}, CPU, OMP_NUM_THREADS=1; "
                  f"{time.time() - t0:.0f} s in all. Produced by `python scripts/reliability_table.py "
                  f"--kills {a.kills} --seed {a.seed} --fuzz {a.fuzz} --doors {a.doors} --writers {a.writers}`."]
    table = "\n".join(lines) + "\n"
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(table)
    print(table)


if __name__ == "__main__":
    main_script()
