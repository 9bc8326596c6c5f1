"""Writing a report: ``report.json``, ``report.md``, ``stats.npz``, PNG plots, and the short terminal table."""

import json
import math
from pathlib import Path

import numpy as np

from kuosan.evaluation.reference import write_stats_file

QUALITY_ROWS = (  # key, label, scale, decimals
    ("frechet_distance", "Fréchet distance", 1, 3),
    ("kid", "KID ×10³", 1e3, 3),
    ("precision", "precision", 1, 3),
    ("recall", "recall", 1, 3),
    ("density", "density", 1, 3),
    ("coverage", "coverage", 1, 3),
)


def jsonable(x):
    """Plain JSON types; NaN and infinities become ``null`` (strict JSON has no spelling for them)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def _fmt(v, scale=1, decimals=3):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(v)
    return f"{v * scale:.{decimals}f}"


def summary_rows(report):
    """``(metric, extractor, generated, real floor)`` rows for the headline numbers."""
    rows = []
    for name, q in report.get("quality", {}).items():
        for key, label, scale, dec in QUALITY_ROWS:
            if key in q:
                rows.append((label, name, _fmt(q[key]["generated"], scale, dec), _fmt(q[key]["floor"], scale, dec)))
    d = report.get("diversity")
    if d:
        g, f = d["class_distribution"]["generated"], d["class_distribution"]["floor"] or {}
        clf = d["classifier"]
        rows.append(("class entropy (normalised)", clf, _fmt(g["entropy_normalized"]),
                     _fmt(f.get("entropy_normalized"))))
        rows.append(("class coverage", clf, _fmt(g["coverage"]), _fmt(f.get("coverage"))))
        rows.append(("mode collapse", clf, _fmt(g["mode_collapse"]), _fmt(f.get("mode_collapse"))))
        if "intra_class_diversity" in d:
            icd = d["intra_class_diversity"]
            rows.append(("intra-class diversity ratio", clf, _fmt(icd["generated"]["mean_ratio"]),
                         _fmt((icd["floor"] or {}).get("mean_ratio"))))
        if "conditional_accuracy" in d:
            ca = d["conditional_accuracy"]
            rows.append(("conditional accuracy", clf, _fmt(ca["generated"]), _fmt(ca["floor"])))
    m = report.get("memorisation")
    if m:
        rows.append(("NN distance to train (median)", m["features"], _fmt(m["generated_median"]),
                     _fmt(m["real_median"])))
        rows.append(("memorisation suspects", m["features"], _fmt(m["suspect_fraction"]), "0.010"))
    gen_speed = report.get("speed", {}).get("generation")
    if gen_speed:
        rows.append(("images/s", gen_speed["device"], _fmt(gen_speed["images_per_s"], 1, 2), ""))
        if gen_speed.get("nfe_per_image") is not None:
            rows.append(("NFE per image", gen_speed["device"], str(gen_speed["nfe_per_image"]), ""))
    return rows


def format_table(report):
    """A short plain-text table (what the command line prints)."""
    header = ("metric", "features", "generated", "real floor")
    rows = [header] + summary_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]

    def line(r):
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    out = [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows[1:]]
    n_gen, n_floor = report["generated"]["images"], _floor_size(report)
    out.append(f"{n_gen} generated images vs {report['reference']['source']}"
               + (f"; floor: {n_floor} real training images vs the same reference" if n_floor else "; no floor"))
    out += [f"warning: {f}" for f in report.get("flags", [])]
    return "\n".join(out)


def _floor_size(report):
    for q in report.get("quality", {}).values():
        if "floor_images" in q:
            return q["floor_images"]
    return None


def markdown_summary(report):
    """The headline table in Markdown (the demo report embeds it)."""
    lines = ["| metric | features | generated | real floor |", "|---|---|---:|---:|"]
    return "\n".join(lines + [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in summary_rows(report)])


def markdown(report):
    g, r = report["generated"], report["reference"]
    lines = ["# kuosan evaluation", "",
             f"- generated: `{g['source']}`: {g['images']} images, "
             f"{g['channels']}×{g['resolution']}×{g['resolution']}",
             f"- reference: `{r['source']}` (at most {r['max_images']} images)",
             f"- floor / memorisation set: `{r['train_reference']}`" if r["train_reference"] else
             "- no training reference: no floors, no memorisation check",
             f"- created {report['created']}, kuosan {report['kuosan_version']}", ""]
    if report.get("flags"):
        lines += ["## Warnings", ""] + [f"- {f}" for f in report["flags"]] + [""]
    lines += ["## Summary", "",
              "The *real floor* is the same metric for real training images of the same count against the same "
              "reference: what a perfect generator would score.", "", markdown_summary(report)]
    lines += ["", "## Feature extractors", "", "| name | dim | details |", "|---|---:|---|"]
    for name, e in report["extractors"].items():
        details = ", ".join(f"{k}: {v}" for k, v in e.items() if k != "dim")
        lines.append(f"| {name} | {e['dim']} | {details} |")
    st = report.get("stability")
    if st:
        lines += ["", "## Training stability", "", f"Log: `{st['log']}`", ""]
        loss = st.get("loss", {})
        if "last_over_first" in loss:
            lines.append(f"- loss: last/first window {_fmt(loss['last_over_first'])}; slope of log-loss over the "
                         f"last half {_fmt(loss['log_loss_slope_per_1k_steps_last_half'], 1, 4)} per 1k steps")
        gn = st.get("grad_norm", {})
        if "spikes" in gn:
            lines.append(f"- gradient norm: median {_fmt(gn['median'], 1, 4)}, {gn['spikes']} spikes above "
                         f"{_fmt(gn['threshold'], 1, 4)} (median + {gn['k']:g}·1.4826·MAD)")
        if "nonfinite_steps" in st:
            lines.append(f"- non-finite steps skipped: {st['nonfinite_steps']}")
        ema = st.get("ema_vs_raw")
        if ema:
            lines.append(f"- held-out loss at step {ema['last_step']}: raw {_fmt(ema['last_raw'], 1, 4)}, "
                         f"EMA {_fmt(ema['last_ema'], 1, 4)} "
                         f"(EMA better by {_fmt(ema['relative_gain_last'], 100, 1)}%)")
    sp = report.get("speed", {})
    if sp:
        lines += ["", "## Speed", ""]
        gs = sp.get("generation")
        if gs:
            timed = gs.get("images") and gs.get("seconds")
            count = f"{gs['images']} images in {gs['seconds']:.2f} s, " if timed else ""
            lines.append(f"- {gs['what']} on {gs['device']}: {count}"
                         f"{_fmt(gs['images_per_s'], 1, 2)} images/s, {_fmt(gs['ms_per_image'], 1, 1)} ms/image"
                         + (f", {gs['nfe_per_image']} network evaluations per image" if gs.get("nfe_per_image") else "")
                         + (f", peak memory {gs['peak_memory_mib']:.0f} MiB ({gs['memory_kind']})"
                            if gs.get("peak_memory_mib") else ""))
        for name, e in sp.get("feature_extraction", {}).items():
            lines.append(f"- {name} features on {e['device']}: {e['images']} images, "
                         f"{_fmt(e['images_per_s'], 1, 1)} images/s")
    if report.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]]
    return "\n".join(lines) + "\n"


def _make_plots(report, out, gen, sets, nn, stability_log, class_names, log):
    from kuosan.evaluation import plots

    made = [plots.sample_grid(gen.images, out / "samples.png", f"generated ({len(gen.images)} images)")]
    d = report.get("diversity")
    if d:
        g, f = d["class_distribution"]["generated"], d["class_distribution"]["floor"]
        made.append(plots.class_bars(g["share"], f["share"] if f else None, class_names,
                                     out / "class_distribution.png"))
    if nn is not None:
        made.append(plots.nn_histogram(nn[0], nn[1], out / "nn_distance.png", report["memorisation"]["features"]))
    if stability_log is not None:
        if "loss" in stability_log:
            made.append(plots.loss_curve(stability_log, out / "loss.png"))
        if "grad_norm" in stability_log:
            made.append(plots.grad_norm_curve(stability_log, report["stability"]["grad_norm"].get("threshold"),
                                              out / "grad_norm.png"))
    return [m for m in made if m]


def write_outputs(report, out_dir, gen, sets, nn, stability_log, plots=True, class_names=None, log=print):
    """Write everything into ``out_dir``; adds ``plots`` and ``files`` to ``report``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_stats_file(out / "stats.npz", [s[0] for s in sets.values()],
                     meta={"source": report["generated"]["source"], "resolution": report["generated"]["resolution"]})
    report["plots"] = _make_plots(report, out, gen, sets, nn, stability_log, class_names, log) if plots else []
    report["files"] = ["report.json", "report.md", "stats.npz", *report["plots"]]
    (out / "report.json").write_text(json.dumps(jsonable(report), indent=2, ensure_ascii=False) + "\n")
    (out / "report.md").write_text(markdown(jsonable(report)))
