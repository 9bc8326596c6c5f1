"""kuosan serve in a real browser: headless Chromium (Debian's, never a downloaded one) driven by Playwright,
against a server on 127.0.0.1 with a tiny model trained here.

Set-up: ``apt-get install -y chromium`` and ``pip install playwright`` (never ``playwright install``). Without
them these tests skip, saying which is missing. ``KUOSAN_CHROMIUM`` names another Chromium binary.
"""

import base64
import io
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

import kuosan
from kuosan.pnginfo import encode_png, read_png_params

pytest.importorskip("starlette", reason="kuosan serve needs the web extra: pip install 'kuosan[serve]'")
pytest.importorskip("uvicorn", reason="kuosan serve needs the web extra: pip install 'kuosan[serve]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install playwright")
CHROMIUM = os.environ.get("KUOSAN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not os.path.isfile(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set KUOSAN_CHROMIUM)",
                allow_module_level=True)

from kuosan.serve.app import create_app  # noqa: E402
from kuosan.serve.service import ServeConfig, Service  # noqa: E402

TIMEOUT_MS = 60_000


def tiny_run(tmp_path_factory):
    """A conditional digits model trained for 4 steps, once a session (the same as tests/test_serve.py's)."""
    from kuosan.cli import main

    run = tmp_path_factory.getbasetemp() / "serve-tiny-run"
    if not (run / "checkpoints" / "latest").is_file():
        assert main(["train", "--config", "digits-tiny", "--out", str(run), "--steps", "4", "--checkpoint_every", "4",
                     "--log_every", "2", "--sample.steps", "2"]) == 0
    return run


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, service, run directory) of a server on a free port of 127.0.0.1, in a thread."""
    import uvicorn

    root = tmp_path_factory.mktemp("browser")
    run = tiny_run(tmp_path_factory)
    service = Service(ServeConfig(checkpoint=str(run), out=str(root / "gallery"), device="cpu"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(service, ["127.0.0.1"]), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "the server did not start"
    yield f"http://127.0.0.1:{port}", service, run
    srv.should_exit = True
    thread.join(10)
    service.close()
    sock.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        args = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []  # root has no sandbox
        b = p.chromium.launch(executable_path=CHROMIUM, args=args)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    pg = context.new_page()
    problems = []
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} ({r.failure})"))
    pg.on("request", lambda r: None if r.url.startswith((server[0], "data:", "blob:")) else
          problems.append(f"request off the server: {r.url}"))
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(server[0] + "/")
    pg.wait_for_selector("body[data-ready='1']")
    yield pg
    shots = os.environ.get("KUOSAN_SCREENSHOTS")
    if shots:
        pg.screenshot(path=os.path.join(shots, f"test-{pg.evaluate('document.body.dataset.tab')}.png"), full_page=True)
    found = list(problems)  # before closing: closing the page aborts what is still loading
    context.close()
    assert not found, found


def fetch(page, server, url: str) -> bytes:
    r = page.request.get(server[0] + url)
    assert r.ok, url
    return r.body()


def test_generate_in_the_browser_and_get_a_png_with_its_parameters(page, server):
    base, service, run = server
    page.select_option("#class", "2")
    page.fill("#seeds", "5-6")
    page.select_option("#sampler", "euler")
    page.fill("#steps", "2")
    page.click("#generate")
    page.wait_for_selector("#gen-download:not([hidden])")
    assert page.inner_text("#status-text").startswith("done in")
    # the grid's src is set with the "done" event; the picture itself arrives a moment later
    page.wait_for_function("() => { const img = document.getElementById('gen-grid');"
                           " return img.complete && img.naturalWidth > 0; }")
    hrefs = page.eval_on_selector_all("#gen-singles a", "links => links.map(a => a.getAttribute('href'))")
    assert len(hrefs) == 2
    data = fetch(page, server, hrefs[0])
    params = read_png_params(data)
    assert {k: params[k] for k in ("model", "sampler", "steps", "seed", "class", "kuosan")} == {
        "model": service.models.default.name, "sampler": "euler", "steps": 2, "seed": 5, "class": 2,
        "kuosan": kuosan.__version__}
    assert params["checksum"] == service.models.load("").checksum
    again = kuosan.load(run, device="cpu").sample([5], 2, sampler="euler", steps=2)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), again.images[0][..., 0])


def test_upload_draw_a_mask_and_inpaint(page, server, tmp_path):
    src = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(src)
    page.click("button[data-tab=edit]")
    page.check("input[name=edit-mode][value=inpaint]")
    page.set_input_files("#upload", str(src))
    page.wait_for_selector("#edit-drop:not(.needs-image)")
    page.fill("#brush", "80")
    box = page.locator("#edit-mask").bounding_box()
    page.mouse.move(box["x"] + 20, box["y"] + 20)
    page.mouse.down()
    for y in range(20, 160, 30):  # a zig-zag over the top-left quarter
        page.mouse.move(box["x"] + 150, box["y"] + y, steps=4)
        page.mouse.move(box["x"] + 20, box["y"] + y + 15, steps=4)
    page.mouse.up()
    page.fill("#steps", "3")
    page.click("#run-edit")
    page.wait_for_selector("#edit-download:not([hidden])")
    entry = page.request.get(server[0] + "/api/gallery").json()["entries"][0]
    assert entry["mode"] == "inpaint" and set(entry["urls"]) == {"grid", "input", "mask"}
    mask = np.asarray(Image.open(io.BytesIO(fetch(page, server, entry["urls"]["mask"]))))
    fitted = np.asarray(Image.open(io.BytesIO(fetch(page, server, entry["urls"]["input"]))))
    result = np.asarray(Image.open(io.BytesIO(fetch(page, server, entry["images"][0]["url"]))))
    painted = mask == 255
    assert painted[:4, :4].any() and not painted[4:, 4:].any()  # where the brush went, at the model's 8x8
    assert np.array_equal(result[~painted], fitted[~painted])   # every pixel outside the mask kept
    assert not np.array_equal(result[painted], fitted[painted])
    assert "pixels regenerated" in page.inner_text("#edit-caption")


def _drop(page, data: bytes, name: str) -> None:
    handle = page.evaluate_handle("""([b64, name]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, { type: "image/png" }));
        return dt;
    }""", [base64.b64encode(data).decode(), name])
    page.dispatch_event("main", "drop", {"dataTransfer": handle})


def test_dropping_a_png_fills_the_form(page, server):
    params = {"mode": "generate", "model": server[1].models.default.name, "sampler": "dpmpp_2m",
              "schedule": "exponential", "steps": 7, "guidance": 2.5, "guidance_interval": [0.2, 3.0], "seed": 42,
              "class": 7, "kuosan": kuosan.__version__}
    page.click("button[data-tab=gallery]")
    _drop(page, encode_png(np.zeros((8, 8, 1), np.uint8), params), "seed42.png")
    page.wait_for_function("() => document.getElementById('steps').value === '7'")
    got = page.evaluate("""() => Object.fromEntries(["sampler", "schedule", "steps", "guidance", "seeds", "class",
        "interval-lo", "interval-hi"].map((id) => [id, document.getElementById(id).value]))""")
    assert got == {"sampler": "dpmpp_2m", "schedule": "exponential", "steps": "7", "guidance": "2.5", "seeds": "42",
                   "class": "7", "interval-lo": "0.2", "interval-hi": "3"}
    assert page.evaluate("document.body.dataset.tab") == "generate"
    assert "settings loaded from seed42.png" in page.inner_text("#toast")
    plain = io.BytesIO()
    Image.new("L", (4, 4)).save(plain, format="PNG")
    _drop(page, plain.getvalue(), "plain.png")
    page.wait_for_function("() => document.getElementById('toast').textContent.includes('no kuosan parameters')")


def test_live_sliders_regenerate_as_they_move(page, server):
    kept = page.request.get(server[0] + "/api/gallery").json()["total"]
    page.fill("#steps", "1")
    page.select_option("#sampler", "euler")
    page.click("button[data-tab=live]")
    page.wait_for_function("() => document.getElementById('live-image').src.startsWith('blob:')")
    page.select_option("#live-a", "1")
    page.select_option("#live-b", "7")
    for seed, mix in (("3", "0"), ("4", "0.5")):
        old = page.eval_on_selector("#live-image", "img => img.src")
        page.fill("#live-seed", seed)
        page.fill("#live-mix", mix)
        page.wait_for_function("old => document.getElementById('live-image').src !== old", arg=old)
    page.wait_for_function("() => document.getElementById('live-timing').textContent.startsWith("
                           "'seed 4 · class 1 · mix 0.50 of class 7: ')")
    assert "ms a frame" in page.inner_text("#live-timing")
    assert page.request.get(server[0] + "/api/gallery").json()["total"] == kept  # frames are not kept
