"""What the page can ask for, without the web framework: the models, their queues, the gallery.

:class:`Service` checks a request against its model, queues it, and runs it on the model's worker thread,
which reports progress (with a preview at most every ``preview_every`` seconds) through the job's ``emit``
and keeps the result in the gallery. :mod:`kuosan.serve.app` puts it on HTTP; tests and the load test use it
directly too.
"""

from __future__ import annotations

import base64
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from kuosan import __version__
from kuosan.errors import KuosanError
from kuosan.serve.forms import MAX_FRAMES, MAX_IMAGES, MODES, parse_request
from kuosan.serve.gallery import Gallery
from kuosan.serve.models import Models
from kuosan.serve.queue import Job, QueueFull, Queues

__all__ = ["ServeConfig", "Service", "png_data_url"]


@dataclass(frozen=True)
class ServeConfig:
    checkpoint: str                        # the model the page opens with: a run, checkpoint or diffusers folder
    runs: str | None = None                # a folder of runs offered too (students of `kuosan distill` included)
    out: str = "gallery"                   # where every result is kept, with its parameters
    device: str = "auto"                   # auto (CUDA if present) | cpu | cuda | cuda:N
    queue: int = 16                        # requests that may wait for one model; more are refused at once
    per_client: int = 4                    # of those, how many may come from one client
    max_loaded: int = 2                    # models kept in memory (the least recently used is dropped)
    preview_every: float = 0.2             # seconds between two live previews of one job


def png_data_url(img) -> str:
    from kuosan.images import encode_png

    return "data:image/png;base64," + base64.b64encode(encode_png(img)).decode()


class _Reporter:
    """A job's ``report(done, total, preview)``: stops a cancelled job, emits throttled progress events."""

    def __init__(self, job: Job, preview_every: float):
        self.job, self.every = job, preview_every
        self.last_event = self.last_preview = 0.0

    def __call__(self, done: int, total: int, preview=None) -> None:
        self.job.check()
        now = time.monotonic()
        if now - self.last_event < min(0.05, self.every) and done < total:
            return
        event = {"type": "progress", "done": done, "total": total}
        if preview is not None and now - self.last_preview >= self.every:
            event["preview"] = png_data_url(preview())
            self.last_preview = time.monotonic()
        self.last_event = now
        self.job.emit(event)


class Service:
    def __init__(self, cfg: ServeConfig):
        from kuosan.rundir import check_not_inside_checkpoint

        check_not_inside_checkpoint(cfg.out, "--out")
        self.cfg = cfg
        self.gallery = Gallery(cfg.out)
        self.models = Models(cfg.checkpoint, cfg.runs, device=cfg.device, max_loaded=cfg.max_loaded,
                             skip=(Path(cfg.out).resolve(),))
        self.queues = Queues(cfg.queue, cfg.per_client)

    def info(self) -> dict:
        """What the page needs to draw its form: models, samplers, schedules, limits, kuosan's defaults."""
        from kuosan.config import SampleConfig
        from kuosan.diffusion.samplers import SAMPLERS, STOCHASTIC
        from kuosan.diffusion.schedules import SCHEDULES
        from kuosan.serve.uploads import MAX_UPLOAD
        from kuosan.validation import LIMITS

        return {"version": __version__, "default": self.models.default.name,
                "models": [{"name": e.name, "kind": e.kind} for e in self.models.entries()],
                "samplers": sorted(SAMPLERS), "stochastic": list(STOCHASTIC), "schedules": list(SCHEDULES),
                "modes": list(MODES), "defaults": dataclasses.asdict(SampleConfig()),
                "limits": {"images": MAX_IMAGES, "frames": MAX_FRAMES, "upload": MAX_UPLOAD,
                           "steps": LIMITS["steps"], "queue": self.cfg.queue}}

    def card(self, name) -> dict:
        from kuosan.serve.card import model_card

        return model_card(self.models.load(name))

    def submit(self, body, client: str = "", emit=lambda event: None, keep: bool = True) -> Job:
        """Check ``body``, queue it on its model; the queued :class:`Job`. A full queue raises at once.
        ``keep``: the result goes to the gallery (the job's result is its entry), else the job's result is
        the :class:`~kuosan.serve.jobs.Made` itself (a live slider's frames are not kept)."""
        if not isinstance(body, dict):
            raise KuosanError("a request is a JSON object of form fields")
        entry = self.models.entry(body.get("model"))
        queue = self.queues[entry.name]
        if queue.waiting() >= queue.capacity:  # before any loading: a full queue answers at once
            raise QueueFull(f"the queue of model {entry.name} is full ({queue.capacity} requests waiting); "
                            "try again in a moment")
        loaded = self.models.load(entry.name)
        req = parse_request(body, loaded)
        job = Job(work=lambda j: self._run(j, req, loaded, keep), client=str(client)[:100], emit=emit)
        queue.submit(job)
        return job

    def _run(self, job: Job, req, loaded, keep: bool):
        from kuosan.serve.jobs import run_request

        job.emit({"type": "started"})
        t0 = time.perf_counter()
        made = run_request(req, loaded, _Reporter(job, self.cfg.preview_every))
        if not keep:
            return made
        return self.gallery.add(req.params(), made, model=loaded.entry.name, checksum=loaded.checksum,
                                seconds=time.perf_counter() - t0)

    def close(self) -> None:
        self.queues.close()
