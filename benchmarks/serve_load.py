"""Load test of ``kuosan serve`` on loopback: concurrent clients, the queue's fairness, refusals, memory.

    python benchmarks/serve_load.py                      # trains a tiny digits model first (seconds)
    python benchmarks/serve_load.py --checkpoint runs/fm --clients 8 --requests 25 --steps 4

It starts ``kuosan serve`` as a child process on 127.0.0.1 (never another address) and, bounded in time
(``--deadline``) and count, measures:

1. **Steady load**: ``--clients`` threads, each sending ``--requests`` generate requests one after another
   (one image, ``--steps`` Euler steps) and reading each progress stream to its end. Reported: failures,
   latency percentiles, requests per second, the places in the queue the streams showed, and fairness:
   per-client throughput and mean latency, with Jain's index J = (Σx)² / (n·Σx²) (1 = perfectly even).
2. **Burst**: ``--burst`` clients at once, each with one slower request. The queue holds ``--queue`` waiting
   requests per model (and 4 from one client); the rest must be refused at once with 503 and a message.
   Reported: accepted, refused, the slowest refusal, and that the accepted ones then finish.
3. **Walk-aways**: clients that close their stream after the first progress event; their jobs must be
   cancelled, so a request sent after them finishes in about the time of one job.
4. **Memory**: the server's resident set size (/proc/PID/status VmRSS), sampled every 0.1 s throughout; the
   steady phase runs ``--rounds`` times, and the RSS after each round shows whether it keeps growing.

Prints a table and writes ``benchmarks/results/serve_load.json``. On a machine shared with other work the
times are noisy; the counts (failures, refusals, cancellations) are not.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
HOST = "127.0.0.1"          # loopback only: the load never leaves the machine


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def tiny_run(work: Path) -> Path:
    run = work / "tiny"
    if not (run / "checkpoints").is_dir():
        subprocess.run([sys.executable, "-m", "kuosan", "train", "--config", "digits-tiny", "--steps", "200",
                        "--out", str(run), "--sample.steps", "4"], check=True, stdout=subprocess.DEVNULL)
    return run


class Server:
    """``kuosan serve`` in a child process, and its memory sampled in a thread."""

    def __init__(self, checkpoint: Path, gallery: Path, queue: int):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "kuosan", "serve", "--checkpoint", str(checkpoint),
                                      "--out", str(gallery), "--host", HOST, "--port", str(self.port),
                                      "--queue", str(queue), "--device", "cpu"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.rss: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample_memory, daemon=True)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"kuosan serve exited: {self.proc.stderr.read()}")
            try:
                status, _ = request("GET", self.port, "/api/info")
                if status == 200:
                    self._sampler.start()
                    return
            except OSError:
                time.sleep(0.2)
        raise SystemExit("kuosan serve did not answer in time")

    def _sample_memory(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(0.1):
            try:
                for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.rss.append((time.monotonic() - t0, int(line.split()[1]) * 1024))
            except OSError:
                return

    def rss_now_mb(self) -> float | None:
        time.sleep(0.25)
        return self.rss[-1][1] / 2 ** 20 if self.rss else None

    def stop(self) -> None:
        self._stop.set()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def request(method: str, port: int, path: str, body: dict | None = None, client: str = "",
            timeout: float = 60) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json", "X-Kuosan-Client": client}
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def job(port: int, body: dict, client: str, walk_away: bool = False, timeout: float = 60) -> dict:
    """Send one request and read its stream: status, the final event, places seen, seconds."""
    t0 = time.monotonic()
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    out = {"status": None, "final": None, "places": [], "seconds": None, "client": client}
    try:
        conn.request("POST", "/api/jobs", body=json.dumps(body),
                     headers={"Content-Type": "application/json", "X-Kuosan-Client": client})
        r = conn.getresponse()
        out["status"] = r.status
        if r.status != 200:
            out["final"] = {"type": "refused", "message": json.loads(r.read()).get("error")}
            return out
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "queued":
                out["places"].append(event["place"])
            if walk_away and event["type"] == "progress":
                out["final"] = {"type": "walked away"}
                return out
            if event["type"] in ("done", "failed", "cancelled"):
                out["final"] = {k: v for k, v in event.items() if k != "result"}
                return out
    except OSError as e:
        out["final"] = {"type": "error", "message": str(e)}
    finally:
        out["seconds"] = time.monotonic() - t0
        conn.close()
    return out


def jain(values: list[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values)) if any(values) else 1.0


def steady(port: int, clients: int, requests: int, steps: int, deadline: float) -> dict:
    results: dict[str, list[dict]] = {f"client{k}": [] for k in range(clients)}

    def client(name: str, k: int) -> None:
        for r in range(requests):
            if time.monotonic() > deadline:
                return
            body = {"seeds": str(1000 * k + r), "steps": steps, "sampler": "euler", "class": r % 10}
            results[name].append(job(port, body, name))

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(name, k)) for k, name in enumerate(results)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    flat = [r for rs in results.values() for r in rs]
    ok = [r for r in flat if r["status"] == 200 and r["final"]["type"] == "done"]
    lat = sorted(r["seconds"] for r in ok)
    per_client = {name: {"done": sum(r in ok for r in rs), "mean_s": statistics.fmean([r["seconds"] for r in rs])
                         if rs else None} for name, rs in results.items()}
    means = [c["mean_s"] for c in per_client.values() if c["mean_s"]]
    return {"clients": clients, "requests_each": requests, "sent": len(flat), "done": len(ok),
            "failures": len(flat) - len(ok), "failure_examples": [r["final"] for r in flat if r not in ok][:3],
            "wall_s": wall, "requests_per_s": len(ok) / wall, "latency_s": {
                "p50": lat[len(lat) // 2] if lat else None, "p90": lat[int(len(lat) * 0.9)] if lat else None,
                "max": lat[-1] if lat else None},
            "max_place_seen": max((max(r["places"]) for r in flat if r["places"]), default=0),
            "per_client": per_client, "jain_throughput": jain([c["done"] for c in per_client.values()]),
            "jain_mean_latency": jain(means), "mean_latency_spread": max(means) / min(means) if means else None}


def burst(port: int, n: int, steps: int) -> dict:
    out: list[dict] = [None] * n

    def one(k: int) -> None:
        out[k] = job(port, {"seeds": str(k), "steps": steps, "sampler": "euler"}, f"burst{k}")

    threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused = [r for r in out if r["status"] == 503]
    accepted = [r for r in out if r["status"] == 200]
    return {"sent": n, "accepted": len(accepted), "refused": len(refused),
            "accepted_done": sum(r["final"]["type"] == "done" for r in accepted),
            "slowest_refusal_s": max((r["seconds"] for r in refused), default=None),
            "refusal_message": refused[0]["final"]["message"] if refused else None,
            "other": [r["final"] for r in out if r["status"] not in (200, 503)][:3]}


def walk_aways(port: int, n: int, steps: int) -> dict:
    t0 = time.monotonic()
    gone = [job(port, {"seeds": "0-7", "steps": steps, "sampler": "euler"}, f"leaver{k}", walk_away=True)
            for k in range(n)]
    left_s = time.monotonic() - t0
    one_job = job(port, {"seeds": "0", "steps": 2, "sampler": "euler"}, "after")
    return {"walked_away": sum(g["final"]["type"] == "walked away" for g in gone), "seconds_to_leave": left_s,
            "next_request": one_job["final"]["type"], "next_request_s": one_job["seconds"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="a run to serve (default: a tiny digits model trained here)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=25, help="requests per client")
    p.add_argument("--steps", type=int, default=2, help="sampler steps per request in the steady phase")
    p.add_argument("--burst", type=int, default=40, help="clients sending at once in the burst phase")
    p.add_argument("--burst-steps", type=int, default=40)
    p.add_argument("--queue", type=int, default=16, help="the server's --queue")
    p.add_argument("--rounds", type=int, default=2, help="times the steady phase runs (memory after each)")
    p.add_argument("--deadline", type=float, default=600, help="seconds the steady phase may take at most")
    p.add_argument("--work", default=None, help="where the tiny model and the gallery go (default: a temp dir)")
    p.add_argument("--out", default=str(RESULTS / "serve_load.json"))
    args = p.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="kuosan-serve-load-"))
    checkpoint = Path(args.checkpoint) if args.checkpoint else tiny_run(work)
    server = Server(checkpoint, work / "gallery", args.queue)
    try:
        server.wait_ready()
        request("POST", server.port, "/api/jobs", {"seeds": "0", "steps": 1})  # loads the model
        t0 = time.monotonic()
        rounds, after = [], {"model loaded": server.rss_now_mb()}
        for k in range(args.rounds):
            rounds.append(steady(server.port, args.clients, args.requests, args.steps, t0 + args.deadline))
            after[f"steady round {k + 1}"] = server.rss_now_mb()
        report = {"steady": rounds[0], "steady_rounds": rounds}
        report["burst"] = burst(server.port, args.burst, args.burst_steps)
        after["burst"] = server.rss_now_mb()
        report["walk_aways"] = walk_aways(server.port, 4, 400)
        after["walk-aways"] = server.rss_now_mb()
        report["seconds"] = time.monotonic() - t0
    finally:
        server.stop()
    rss = [b for _, b in server.rss]
    report["memory"] = {"rss_start_mb": rss[0] / 2 ** 20 if rss else None, "rss_peak_mb": max(rss) / 2 ** 20 if rss
                        else None, "rss_end_mb": rss[-1] / 2 ** 20 if rss else None, "samples": len(rss),
                        "rss_after_mb": after}
    report["setup"] = {"checkpoint": str(checkpoint), "host": HOST, "queue": args.queue, "steps": args.steps,
                       "burst_steps": args.burst_steps, "python": platform.python_version(),
                       "machine": platform.machine(), "cpus": os.cpu_count(),
                       "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    print_table(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {args.out}")
    b, w = report["burst"], report["walk_aways"]
    ok = (all(r["failures"] == 0 for r in report["steady_rounds"]) and b["accepted_done"] == b["accepted"]
          and not b["other"] and w["next_request"] == "done")
    return 0 if ok else 1


def print_table(r: dict) -> None:
    s, b, w, m = r["steady"], r["burst"], r["walk_aways"], r["memory"]
    rows = [
        ("steady: requests done / sent", f"{s['done']} / {s['sent']} ({s['clients']} clients x {s['requests_each']})"),
        ("steady: failures", str(s["failures"])),
        ("steady: requests per second", f"{s['requests_per_s']:.2f}"),
        ("steady: latency p50 / p90 / max", " / ".join(f"{s['latency_s'][k]:.3f} s" for k in ("p50", "p90", "max"))
         if s["done"] else "-"),
        ("steady: deepest place in the queue seen", str(s["max_place_seen"])),
        ("fairness: Jain's index, throughput", f"{s['jain_throughput']:.4f}"),
        ("fairness: Jain's index, mean latency", f"{s['jain_mean_latency']:.4f}"),
        ("fairness: slowest / fastest client mean", f"{s['mean_latency_spread']:.3f}"),
        ("burst: accepted / refused (503)", f"{b['accepted']} / {b['refused']} of {b['sent']}"),
        ("burst: accepted that finished", str(b["accepted_done"])),
        ("burst: slowest refusal", f"{b['slowest_refusal_s']:.3f} s" if b["slowest_refusal_s"] is not None else "-"),
        ("walk-aways: streams closed early", str(w["walked_away"])),
        ("walk-aways: next request", f"{w['next_request']} in {w['next_request_s']:.3f} s"),
        ("memory: server RSS start / peak / end", f"{m['rss_start_mb']:.0f} / {m['rss_peak_mb']:.0f} / "
                                                  f"{m['rss_end_mb']:.0f} MB" if m["samples"] else "-"),
    ]
    rows += [(f"steady round {k + 1}: done / failures / per s", f"{x['done']} / {x['failures']} / "
              f"{x['requests_per_s']:.2f}") for k, x in enumerate(r["steady_rounds"][1:], start=1)]
    rows += [(f"memory: RSS after {phase}", f"{mb:.0f} MB") for phase, mb in m["rss_after_mb"].items() if mb]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")


if __name__ == "__main__":
    sys.exit(main())
