"""The web page on HTTP (Starlette): the page itself, its JSON API, and progress streamed as server-sent events.

    GET  /                         the page (static/index.html, app.js, style.css: nothing from the internet)
    GET  /api/info                 models, samplers, schedules, limits
    GET  /api/card?model=NAME      the model's card; /api/report?model=NAME&file=F.png one of its report's plots
    POST /api/jobs                 a request (JSON) -> text/event-stream: queued, started, progress, done | failed
    POST /api/live                 a one-image request -> the PNG, for sliders that re-generate as they move
    GET  /api/gallery              entries, newest first; /api/gallery/ID/FILE.png one of an entry's PNGs
    POST /api/pnginfo              a PNG's bytes -> the parameters kuosan wrote into it

Errors are JSON ``{"error": "one line"}``: 400 for a bad field, 404 for an unknown name, 413 for a body too big,
503 for a full queue. A client that closes a job's stream cancels the job. Every response carries a strict
Content-Security-Policy (scripts, styles and connections only from this server).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from kuosan.errors import KuosanError
from kuosan.serve.queue import QueueFull
from kuosan.serve.service import Service
from kuosan.serve.uploads import MAX_UPLOAD

__all__ = ["create_app", "STATIC", "MAX_BODY"]

STATIC = Path(__file__).with_name("static")
MAX_BODY = 2 * (MAX_UPLOAD * 4 // 3 + 64) + (64 << 10)  # an image and a mask as base64, and the fields
_HEARTBEAT = 0.5            # seconds between checks of a waiting job's place (and keep-alive comments)
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                               "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class _TooBig(KuosanError):
    pass


class _NotFound(KuosanError):
    pass


def _host_name(host: str) -> str:
    """A Host header's name: "127.0.0.1:7860" -> "127.0.0.1", "[::1]:7860" -> "::1"."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _guard(app, allowed_hosts):
    """ASGI middleware: refuse a Host header not in ``allowed_hosts`` (None: any; a page on 127.0.0.1 is then
    out of reach of DNS rebinding) and add the security headers to every response."""
    extra = [(k.lower().encode(), v.encode()) for k, v in _HEADERS.items()]

    async def guarded(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        if allowed_hosts is not None and _host_name(host) not in allowed_hosts:
            from starlette.responses import PlainTextResponse

            return await PlainTextResponse("unknown host", status_code=421)(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await app(scope, receive, send_with_headers)

    return guarded


def _error(e: Exception):
    from starlette.responses import JSONResponse

    status = 503 if isinstance(e, QueueFull) else 413 if isinstance(e, _TooBig) else \
        404 if isinstance(e, _NotFound) else 400
    return JSONResponse({"error": str(e)}, status_code=status, headers={"Cache-Control": "no-store"})


def _api(handler):
    """A handler whose KuosanErrors become one-line JSON errors."""
    async def wrapped(request):
        try:
            return await handler(request)
        except KuosanError as e:
            return _error(e)
    return wrapped


async def _body(request, limit: int) -> bytes:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise _TooBig(f"the request is {int(length) / 1e6:.1f} MB; at most {limit / 1e6:.1f} MB are accepted")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooBig(f"the request is over {limit / 1e6:.1f} MB, the most that is accepted")
        chunks.append(chunk)
    return b"".join(chunks)


async def _json(request) -> dict:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise KuosanError("send the request as JSON (Content-Type: application/json)")
    try:
        body = json.loads(await _body(request, MAX_BODY))
    except (ValueError, UnicodeDecodeError):
        raise KuosanError("the request is not valid JSON") from None
    if not isinstance(body, dict):
        raise KuosanError("a request is a JSON object of form fields")
    return body


def _with_urls(entry: dict) -> dict:
    base = f"/api/gallery/{entry['id']}/"
    return {**entry, "images": [{**i, "url": base + i["file"]} for i in entry.get("images", [])],
            "urls": {k: base + v for k, v in (entry.get("files") or {}).items()}}


def _sse(event: dict) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"


async def _events(job, events: asyncio.Queue):
    """A job's events as server-sent events, with its place in the queue while it waits."""
    place = job.place()
    yield _sse({"type": "queued", "place": place})
    while True:
        try:
            event = await asyncio.wait_for(events.get(), _HEARTBEAT)
        except asyncio.TimeoutError:
            now = job.place()
            if job.state == "waiting" and now != place:
                place = now
                yield _sse({"type": "queued", "place": now})
            else:
                yield ": waiting\n\n"  # a comment line: a closed connection shows up on the next write
            continue
        if event["type"] == "done":
            event = {**event, "result": _with_urls(event["result"])}
        yield _sse(event)
        if event["type"] in ("done", "failed", "cancelled"):
            return


def _cancelling(response, job):
    """``response`` as an ASGI app that cancels ``job`` when it ends before the job does: the client went
    away, even before the stream began."""
    async def app(scope, receive, send):
        try:
            await response(scope, receive, send)
        finally:
            if not job.finished.is_set():
                job.cancel()
    return app


def _client(request) -> str:
    return request.headers.get("x-kuosan-client") or (request.client.host if request.client else "")


def create_app(service: Service, allowed_hosts: list[str] | None = None):
    """The Starlette application serving ``service``; ``allowed_hosts``: Host names it answers (None: any)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    async def index(request):
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @_api
    async def info(request):
        return JSONResponse(await run_in_threadpool(service.info))

    @_api
    async def card(request):
        return JSONResponse(await run_in_threadpool(service.card, request.query_params.get("model")))

    @_api
    async def report(request):
        from kuosan.serve.card import report_file

        loaded = await run_in_threadpool(service.models.load, request.query_params.get("model"))
        path = report_file(loaded, request.query_params.get("file"))
        if path is None:
            raise _NotFound("no such plot in the model's report")
        return FileResponse(path, media_type="image/png")

    async def _submit(request, keep: bool = True, forced_mode: str | None = None):
        body = await _json(request)
        if forced_mode is not None:
            if body.get("mode") not in (None, "", forced_mode):
                raise KuosanError(f"this endpoint makes {forced_mode} images only")
            body["mode"] = forced_mode
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def emit(event):
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop has closed: nobody is listening
                pass

        job = await run_in_threadpool(service.submit, body, _client(request), emit, keep)
        return job, events

    @_api
    async def jobs(request):
        job, events = await _submit(request)

        # no-cache, not no-store: Chromium reports a streamed no-store response as aborted
        response = StreamingResponse(_events(job, events), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return _cancelling(response, job)

    @_api
    async def live(request):
        from kuosan.pnginfo import encode_png

        job, _ = await _submit(request, keep=False, forced_mode="live")
        while not job.finished.is_set():
            if await request.is_disconnected():
                job.cancel()
                return Response(status_code=499)
            await asyncio.sleep(0.01)
        if job.state != "done":
            raise QueueFull("the request was cancelled") if job.state == "cancelled" else KuosanError(job.error)
        img, params = job.result.images[0]
        seconds = job.timings["finished"] - job.timings["started"]
        return Response(encode_png(img, params), media_type="image/png",
                        headers={"Cache-Control": "no-cache", "X-Kuosan-Seconds": f"{seconds:.4f}",
                                 "X-Kuosan-Params": json.dumps(params, ensure_ascii=True)})

    @_api
    async def gallery(request):
        from kuosan.validation import whole

        q = request.query_params
        offset = whole(q.get("offset", "0"), "offset", 0, 10 ** 9)
        limit = whole(q.get("limit", "48"), "limit", 1, 200)
        entries, total = await run_in_threadpool(service.gallery.entries, offset, limit)
        return JSONResponse({"entries": [_with_urls(e) for e in entries], "total": total, "offset": offset})

    @_api
    async def gallery_file(request):
        try:
            path = service.gallery.file(request.path_params["entry"], request.path_params["file"])
        except KuosanError as e:
            raise _NotFound(str(e)) from None
        headers = {"Cache-Control": "private, max-age=86400"}
        if request.query_params.get("download"):
            headers["Content-Disposition"] = f'attachment; filename="{request.path_params["entry"]}-{path.name}"'
        return FileResponse(path, media_type="image/png", headers=headers)

    @_api
    async def pnginfo(request):
        from kuosan.pnginfo import read_png_params

        params = read_png_params(await _body(request, MAX_UPLOAD))
        note = None if params else "this PNG carries no kuosan parameters"
        match = await run_in_threadpool(service.models.match, params) if params else None
        return JSONResponse({"params": params, "model": match, "message": note})

    routes = [
        Route("/", index), Route("/api/info", info), Route("/api/card", card), Route("/api/report", report),
        Route("/api/jobs", jobs, methods=["POST"]), Route("/api/live", live, methods=["POST"]),
        Route("/api/gallery", gallery), Route("/api/gallery/{entry}/{file}", gallery_file),
        Route("/api/pnginfo", pnginfo, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.service = service
    return _guard(app, None if allowed_hosts is None else set(allowed_hosts))
