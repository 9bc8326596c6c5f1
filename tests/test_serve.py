"""kuosan serve without a browser: PNG parameters, uploads, requests, the queue, the gallery, and the HTTP API
through Starlette's test client, on a tiny model trained here."""

import base64
import io
import json
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

import kuosan
from kuosan.errors import KuosanError
from kuosan.pnginfo import encode_png, parameters_text, read_png_params

from kuosan.serve.forms import MAX_IMAGES, parse_request
from kuosan.serve.gallery import Gallery
from kuosan.serve.models import Models
from kuosan.serve.queue import Cancelled, Job, ModelQueue, QueueFull
from kuosan.serve.service import ServeConfig, Service
from kuosan.serve.uploads import MAX_UPLOAD, fit_image, fit_mask, open_image
from kuosan.validation import check_sample_request


def web(app_args=(), **client_kw):
    """A test client of the page's app (the HTTP tests skip without the web extra)."""
    pytest.importorskip("starlette", reason="kuosan serve needs the web extra: pip install 'kuosan[serve]'")
    from starlette.testclient import TestClient

    from kuosan.serve.app import create_app

    return TestClient(create_app(*app_args), **client_kw)


def tiny_run(tmp_path_factory):
    """A conditional digits model trained for 4 steps, once a session (tests/test_serve_browser.py shares it)."""
    from kuosan.cli import main

    run = tmp_path_factory.getbasetemp() / "serve-tiny-run"
    if not (run / "checkpoints" / "latest").is_file():
        assert main(["train", "--config", "digits-tiny", "--out", str(run), "--steps", "4", "--checkpoint_every", "4",
                     "--log_every", "2", "--sample.steps", "2"]) == 0
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A folder of runs: ``tiny`` (a conditional digits model), ``nested/student`` (a copy under a subfolder)."""
    import shutil

    root = tmp_path_factory.mktemp("serve") / "runs"
    shutil.copytree(tiny_run(tmp_path_factory), root / "tiny")
    shutil.copytree(root / "tiny", root / "nested" / "student")
    return root


@pytest.fixture(scope="module")
def service(runs, tmp_path_factory):
    svc = Service(ServeConfig(checkpoint=str(runs / "tiny"), runs=str(runs), out=str(runs / "gallery"),
                              device="cpu", preview_every=0.0))
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def client(service):
    with web((service,)) as c:
        yield c


def png_url(img: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return "data:application/octet-stream;base64," + base64.b64encode(buf.getvalue()).decode()


def events_of(response) -> list[dict]:
    return [json.loads(line[6:]) for line in response.text.split("\n") if line.startswith("data: ")]


def run_job(client, **body) -> dict:
    r = client.post("/api/jobs", json=body)
    assert r.status_code == 200, r.text
    events = events_of(r)
    assert events[-1]["type"] == "done", events[-1]
    return events[-1]["result"]


def png_at(client, url: str) -> tuple[np.ndarray, dict]:
    data = client.get(url).content
    return np.asarray(Image.open(io.BytesIO(data))), read_png_params(data)


# --- PNG parameters ----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(6, 5, 1), (4, 7, 3)])
def test_png_parameters_round_trip_with_the_pixels(shape):
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    params = {"model": "fm", "sampler": "heun", "steps": 18, "seed": 5, "class": 3, "class_name": "Kleid · 裙子",
              "guidance": 2.0, "guidance_interval": [0.3, 5.0], "kuosan": "0.1.0"}
    data = encode_png(img, params)
    assert read_png_params(data) == params
    back = np.asarray(Image.open(io.BytesIO(data)))
    assert np.array_equal(back, img[..., 0] if shape[-1] == 1 else img)
    big = np.asarray(Image.open(io.BytesIO(encode_png(img, params, scale=3))))
    assert big.shape[:2] == (shape[0] * 3, shape[1] * 3)
    text = Image.open(io.BytesIO(data)).info["parameters"]
    assert text.splitlines()[0] == "generate, class 3 (Kleid · 裙子)"
    assert "Steps: 18, Sampler: heun" in text and "Seed: 5" in text and "Version: kuosan 0.1.0" in text


def test_png_parameters_are_absent_or_refused_clearly():
    plain = io.BytesIO()
    Image.new("L", (3, 3)).save(plain, format="PNG")
    assert read_png_params(plain.getvalue()) is None
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("kuosan", "not json {")
    odd = io.BytesIO()
    Image.new("L", (3, 3)).save(odd, format="PNG", pnginfo=info)
    assert read_png_params(odd.getvalue()) is None
    jpeg = io.BytesIO()
    Image.new("RGB", (3, 3)).save(jpeg, format="JPEG")
    with pytest.raises(KuosanError, match="JPEG"):
        read_png_params(jpeg.getvalue())
    with pytest.raises(KuosanError, match="not a readable image"):
        read_png_params(b"hello")
    with pytest.raises(KuosanError, match="plain JSON"):
        encode_png(np.zeros((2, 2, 1), np.uint8), {"x": float("nan")})


def test_parameters_text_reads_like_other_front_ends():
    text = parameters_text({"mode": "img2img", "steps": 4, "sampler": "euler", "seed": 1, "strength": 0.5,
                            "checksum": "ab" * 32})
    assert text == "img2img\nSteps: 4, Sampler: euler, Seed: 1, Strength: 0.5, Model hash: abababababab"


# --- uploads ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["RGBA", "P", "I;16", "CMYK", "1", "LA", "F"])
def test_any_image_mode_and_size_is_fitted_to_the_model(mode):
    im = Image.new(mode, (37, 23))
    fmt = "TIFF" if mode in ("CMYK", "F") else "PNG"
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    got = open_image(buf.getvalue())
    for channels in (1, 3):
        out = fit_image(got, channels, 8)
        assert out.shape == (channels, 8, 8) and out.dtype == np.uint8


def test_uploads_are_recognised_by_decoding_and_bounded():
    with pytest.raises(KuosanError, match="not an image file"):
        open_image(b"GIF89a but not really")
    with pytest.raises(KuosanError, match="MB"):
        open_image(b"\0" * (MAX_UPLOAD + 1))
    huge = io.BytesIO()
    Image.new("1", (8000, 8000)).save(huge, format="PNG")  # 64 million pixels in a few kB
    with pytest.raises(KuosanError, match="million"):
        open_image(huge.getvalue())


def test_a_mask_is_white_where_to_regenerate():
    m = Image.new("L", (16, 16), 0)
    m.paste(255, (0, 0, 8, 16))
    keep = fit_mask(m, 4)
    assert keep.shape == (1, 4, 4)
    assert (keep[0, :, :2] == 0).all() and (keep[0, :, 2:] == 1).all()


# --- requests ------------------------------------------------------------------------------------

def test_requests_are_checked_as_the_command_line_checks_them(service):
    loaded = service.models.load("")
    for field, value in [("steps", 0), ("steps", "abc"), ("guidance", -1), ("sampler", "nope"), ("batch", 1.5),
                         ("guidance_rescale", 1.5), ("guidance_rescale", "x")]:
        with pytest.raises(KuosanError) as page:
            parse_request({field: value}, loaded)
        with pytest.raises(KuosanError) as library:
            check_sample_request(**{field: value})
        assert str(page.value) == str(library.value)
    with pytest.raises(KuosanError, match="unknown field 'stpes'"):
        parse_request({"stpes": 3}, loaded)
    with pytest.raises(KuosanError, match="unknown class 'cat'"):
        parse_request({"class": "cat"}, loaded)
    with pytest.raises(KuosanError, match="at most 64"):
        parse_request({"seeds": f"0-{MAX_IMAGES}"}, loaded)
    with pytest.raises(KuosanError, match="deterministic sampler"):
        parse_request({"mode": "invert", "sampler": "ddpm", "image": png_url(Image.new("L", (8, 8)))}, loaded)
    with pytest.raises(KuosanError, match="below its high"):
        parse_request({"interval": [2, 1]}, loaded)


def test_guidance_rescale_reaches_the_guided_denoiser_at_every_door(tmp_path_factory, service, capsys):
    """Lin et al. 2024, eq. 15-16, from the Python API, the command line and the page, as
    kuosan.diffusion.guidance applies it; out of [0, 1] it is one line at each."""
    from kuosan.cli import main
    from kuosan.diffusion.guidance import classifier_free_guidance
    from kuosan.sampling import generate

    run = tiny_run(tmp_path_factory)
    pipe = kuosan.load(run)
    seeds, label = [0, 1, 2], 3
    rescaled = pipe.sample(seeds, label, guidance=4.0, guidance_rescale=0.7, backend="torch")
    plain = pipe.sample(seeds, label, guidance=4.0, backend="torch")
    assert pipe.sample(seeds, label, guidance=4.0, guidance_rescale=0.0, backend="torch").images.tobytes() == \
        plain.images.tobytes()
    by_hand = generate(pipe.precond, pipe.sample_config, shape=pipe.image_shape, seeds=seeds, class_labels=[label] * 3,
                       denoiser=classifier_free_guidance(pipe.precond, 4.0, pipe.num_classes, rescale=0.7))
    assert rescaled.images.tobytes() == pipe.to_images(by_hand).tobytes()
    assert rescaled.images.tobytes() != plain.images.tobytes()
    assert rescaled.params["guidance_rescale"] == 0.7 and "guidance_rescale" not in plain.params
    with pytest.raises(KuosanError, match=r"^guidance_rescale must be between 0 and 1, got 2(\.0)?$"):
        pipe.sample(seeds, label, guidance=4.0, guidance_rescale=2)
    out = tmp_path_factory.mktemp("rescale")
    assert main(["sample", "--checkpoint", str(run), "--seeds", "0-2", "--class", "3", "--guidance", "4",
                 "--guidance-rescale", "0.7", "--out", str(out / "ok"), "--backend", "torch"]) == 0
    assert main(["sample", "--checkpoint", str(run), "--n", "2", "--guidance-rescale", "1.5",
                 "--out", str(out / "bad")]) == 2
    assert "--guidance-rescale must be between 0 and 1, got 1.5" in capsys.readouterr().err
    assert not (out / "bad").exists()
    req = parse_request({"guidance": 4, "guidance_rescale": "0.7"}, service.models.load(""))
    assert req.sample.guidance_rescale == 0.7 and req.params()["guidance_rescale"] == 0.7


def test_a_request_takes_the_model_defaults_and_a_number_is_one_seed(service):
    loaded = service.models.load("")
    req = parse_request({"seeds": 7, "class": "3", "steps": ""}, loaded)
    assert req.seeds == (7,) and req.labels == (3,)
    assert req.sample == loaded.pipe.sample_config
    assert parse_request({"seeds": "0-3"}, loaded).labels == (0, 1, 2, 3)  # no class: each seed its class in turn


# --- models and the gallery: names resolve inside their folders only -----------------------------------

def test_models_are_found_by_scanning_and_resolve_only_by_name(runs, tmp_path):
    outside = tmp_path / "outside"
    import shutil

    shutil.copytree(runs / "tiny", outside)
    link = runs / "linked"
    link.symlink_to(outside, target_is_directory=True)
    try:
        models = Models(runs / "tiny", runs, device="cpu", skip=((runs / "gallery").resolve(),))
        names = [e.name for e in models.entries()]
        assert names[0] == "tiny" and "nested/student" in names and "linked" not in names
        for bad in ("../outside", str(outside), "/etc", "nested/../tiny/..", "linked", 5):
            with pytest.raises(KuosanError):
                models.entry(bad)
        assert models.entry("nested/student").path == runs / "nested" / "student"
    finally:
        link.unlink()


def test_gallery_files_resolve_only_inside_their_entry(tmp_path):
    from kuosan.serve.jobs import Made

    g = Gallery(tmp_path / "g")
    made = Made([(np.zeros((4, 4, 1), np.uint8), {"seed": 1})], grid=None)
    first = g.add({"mode": "generate"}, made, model="m", checksum="", seconds=0.1)
    second = g.add({"mode": "generate"}, made, model="m", checksum="", seconds=0.1)
    assert [e["id"] for e in g.entries()[0]] == [second["id"], first["id"]]  # newest first
    assert g.file(first["id"], "000-seed1.png").is_file()
    (tmp_path / "secret.png").write_bytes(b"x")
    (tmp_path / "g" / first["id"] / "link.png").symlink_to(tmp_path / "secret.png")
    for entry, name in [(first["id"], "../secret.png"), (first["id"], "entry.json"), (first["id"], "link.png"),
                        ("../g", "000-seed1.png"), (first["id"] + "/..", "x.png"), (first["id"], None)]:
        with pytest.raises(KuosanError):
            g.file(entry, name)


# --- the queue -------------------------------------------------------------------------------------

def _blocker():
    gate = threading.Event()

    def work(job):
        while not gate.wait(0.01):
            job.check()
        return "ok"

    return gate, work


def test_a_full_queue_refuses_at_once_and_clients_take_turns():
    q = ModelQueue("m", capacity=4, per_client=3)
    gate, block = _blocker()
    order = []
    running = Job(work=block, client="x")
    q.submit(running)
    while running.state != "running":
        time.sleep(0.005)
    jobs = [Job(work=lambda j, k=k: order.append(k), client=c) for k, c in enumerate("aaab")]
    places = [q.submit(j) for j in jobs]
    assert places == [1, 2, 3, 2]  # b's one job goes before a's second one
    t0 = time.monotonic()
    with pytest.raises(QueueFull, match="full"):
        q.submit(Job(work=block, client="c"))
    assert time.monotonic() - t0 < 0.1
    assert [q.place(j) for j in jobs] == [1, 3, 4, 2]
    gate.set()
    for j in jobs:
        assert j.finished.wait(5)
    assert order == [0, 3, 1, 2]
    q.close()


def test_one_client_cannot_fill_the_queue_alone():
    q = ModelQueue("m", capacity=8, per_client=2)
    gate, block = _blocker()
    q.submit(Job(work=block, client="x"))
    q.submit(Job(work=block, client="a"))
    q.submit(Job(work=block, client="a"))
    with pytest.raises(QueueFull, match="you already have 2"):
        q.submit(Job(work=block, client="a"))
    q.submit(Job(work=block, client="b"))
    gate.set()
    q.close()


def test_cancelling_stops_a_waiting_and_a_running_job():
    q = ModelQueue("m")
    gate, block = _blocker()
    running, waiting = Job(work=block), Job(work=block)
    q.submit(running)
    q.submit(waiting)
    while running.state != "running":
        time.sleep(0.005)
    waiting.cancel()
    assert waiting.state == "cancelled" and q.waiting() == 0
    running.cancel()
    assert running.finished.wait(5) and running.state == "cancelled"
    failing = Job(work=lambda j: (_ for _ in ()).throw(KuosanError("bad thing")))
    events = []
    failing.emit = events.append
    q.submit(failing)
    assert failing.finished.wait(5) and failing.error == "bad thing"
    assert events == [{"type": "failed", "message": "bad thing"}]
    with pytest.raises(Cancelled):
        running.check()
    q.close()


# --- the HTTP API ------------------------------------------------------------------------------------

def test_the_page_is_served_with_nothing_from_the_internet(client):
    r = client.get("/")
    assert r.status_code == 200 and "default-src 'none'" in r.headers["content-security-policy"]
    from kuosan.serve.app import STATIC

    for f in STATIC.iterdir():
        text = f.read_text()
        assert "http://" not in text and "https://" not in text, f.name  # no CDN, no fonts, no telemetry
        assert client.get(f"/static/{f.name}").status_code == 200
    assert client.get("/static/../app.py").status_code == 404
    info = client.get("/api/info").json()
    assert [m["name"] for m in info["models"]][:1] == ["tiny"] and "heun" in info["samplers"]


def test_generate_streams_progress_and_keeps_pngs_with_their_parameters(client, service):
    r = client.post("/api/jobs", json={"seeds": "4-6", "class": 2, "sampler": "euler", "steps": 3, "guidance": 1.5,
                                       "interval": [0.05, 50], "batch": 2})
    events = events_of(r)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "queued" and kinds[1] == "started" and kinds[-1] == "done"
    progress = [e for e in events if e["type"] == "progress"]
    assert [p["done"] for p in progress] == list(range(1, 7)) and all(p["total"] == 6 for p in progress)
    assert all(p["preview"].startswith("data:image/png;base64,") for p in progress)
    entry = events[-1]["result"]
    assert [i["seed"] for i in entry["images"]] == [4, 5, 6]
    pixels, params = png_at(client, entry["images"][1]["url"])
    loaded = service.models.load("tiny")
    assert params["model"] == "tiny" and params["checksum"] == loaded.checksum and len(params["checksum"]) == 64
    assert {k: params[k] for k in ("sampler", "steps", "seed", "class", "guidance", "guidance_interval", "kuosan")} == {
        "sampler": "euler", "steps": 3, "seed": 5, "class": 2, "guidance": 1.5, "guidance_interval": [0.05, 50.0],
        "kuosan": kuosan.__version__}
    listed = client.get("/api/gallery").json()["entries"]
    assert listed[0]["id"] == entry["id"]
    assert client.get(entry["urls"]["grid"] + "?download=1").headers["content-disposition"].startswith("attachment")


def test_a_generated_image_is_the_one_its_seed_makes_through_the_library(client, runs):
    entry = run_job(client, seeds="9", **{"class": 4}, sampler="heun", steps=3, guidance=2)
    pixels, params = png_at(client, entry["images"][0]["url"])
    pipe = kuosan.load(runs / "tiny", device="cpu")
    again = pipe.sample([params["seed"]], params["class"], sampler=params["sampler"], steps=params["steps"],
                        guidance=params["guidance"])
    assert np.array_equal(pixels, again.images[0][..., 0])


def test_img2img_at_strength_zero_gives_the_input_back(client):
    src = Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    entry = run_job(client, mode="img2img", image=png_url(src), strength=0, steps=4)
    out, params = png_at(client, entry["images"][0]["url"])
    assert params["strength"] == 0 and params["mode"] == "img2img"
    assert np.array_equal(out, fit_image(src, 1, 8)[0])


def test_inpainting_keeps_every_pixel_outside_the_mask(client):
    src = Image.fromarray(np.random.default_rng(2).integers(0, 256, (8, 8), dtype=np.uint8))
    mask = Image.new("L", (8, 8), 0)
    mask.paste(255, (2, 2, 6, 6))
    entry = run_job(client, mode="inpaint", image=png_url(src, "WEBP"), mask=png_url(mask), steps=4, resample=2,
                    jump=2, seeds="3")
    out, _ = png_at(client, entry["images"][0]["url"])
    keep = fit_mask(mask, 8)[0] == 1
    fitted = fit_image(open_image(base64.b64decode(png_url(src, "WEBP").split(",")[1])), 1, 8)[0]
    assert np.array_equal(out[keep], fitted[keep]) and not np.array_equal(out[~keep], fitted[~keep])
    assert set(entry["urls"]) == {"grid", "input", "mask"}


def test_interpolation_starts_at_the_first_seeds_image(client):
    entry = run_job(client, mode="interpolate", seeds="3,17", frames=4, steps=3, sampler="euler", **{"class": 1})
    first, _ = png_at(client, entry["images"][0]["url"])
    alone = run_job(client, seeds="3", sampler="euler", steps=3, **{"class": 1})
    image, _ = png_at(client, alone["images"][0]["url"])
    assert len(entry["images"]) == 4 and np.abs(first.astype(int) - image.astype(int)).max() <= 1
    mixed = run_job(client, mode="interpolate", seeds="3", frames=3, steps=2, **{"class": 1}, class_b=7)
    assert [i["t"] for i in mixed["images"]] == [0.0, 0.5, 1.0]


def test_invert_and_regenerate_reports_the_round_trip(client):
    src = Image.fromarray(np.random.default_rng(3).integers(0, 256, (8, 8), dtype=np.uint8))
    entry = run_job(client, mode="invert", image=png_url(src), steps=3, source=2, **{"class": 5})
    assert "round-trip PSNR" in entry["note"] and [i.get("edit") for i in entry["images"]] == ["reconstruction", None]
    assert entry["images"][1]["class"] == 5


def test_live_answers_with_one_png_and_keeps_nothing(client):
    before = client.get("/api/gallery").json()["total"]
    r = client.post("/api/live", json={"seeds": "3", "steps": 1, "class": 1, "class_b": 2, "mix": 0.25})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    params = read_png_params(r.content)
    assert params["mode"] == "live" and params["mix"] == 0.25 and params["class_b"] == 2
    assert float(r.headers["x-kuosan-seconds"]) > 0
    assert client.get("/api/gallery").json()["total"] == before


def test_bad_requests_get_one_line_with_a_status(client):
    cases = [
        (client.post("/api/jobs", json={"steps": -2}), 400, "steps must be positive"),
        (client.post("/api/jobs", json={"model": "../../etc"}), 400, "unknown model"),
        (client.post("/api/jobs", content="steps=3", headers={"content-type": "text/plain"}), 400, "JSON"),
        (client.post("/api/jobs", content=b"{", headers={"content-type": "application/json"}), 400, "valid JSON"),
        (client.post("/api/jobs", json={"mode": "img2img", "image": "data:,aGk="}), 400, "not an image"),
        (client.post("/api/jobs", content=b" " * (30 << 20), headers={"content-type": "application/json"}), 413, "MB"),
        (client.get("/api/card?model=nope"), 400, "unknown model"),
        (client.get("/api/gallery/20200101-000000-000-abcd/x.png"), 404, "no gallery entry"),
        (client.get("/api/gallery?limit=100000"), 400, "limit"),
        (client.post("/api/pnginfo", content=b"not a png"), 400, "not a readable image"),
    ]
    for r, status, words in cases:
        assert r.status_code == status, r.text
        assert words in r.json()["error"] and "\n" not in r.json()["error"]


def test_a_full_queue_answers_503_at_once(runs, tmp_path):
    svc = Service(ServeConfig(checkpoint=str(runs / "tiny"), out=str(tmp_path / "g"), device="cpu", queue=1))
    gate, block = _blocker()
    try:
        q = svc.queues["tiny"]
        first = Job(work=block, client="x")
        q.submit(first)
        while first.state != "running":
            time.sleep(0.005)
        q.submit(Job(work=block, client="y"))  # one runs, one waits: the queue of one is full
        with web((svc,)) as c:
            t0 = time.monotonic()
            r = c.post("/api/jobs", json={"steps": 2})
            assert r.status_code == 503 and "full" in r.json()["error"]
            assert time.monotonic() - t0 < 2
    finally:
        gate.set()
        svc.close()


def test_a_client_that_goes_away_cancels_its_job(client, service, monkeypatch):
    jobs = []
    submit = service.submit
    monkeypatch.setattr(service, "submit", lambda *a, **k: jobs.append(submit(*a, **k)) or jobs[-1])
    with client.stream("POST", "/api/jobs", json={"seeds": "0-63", "steps": 500, "batch": 8}) as r:
        for line in r.iter_lines():
            if line.startswith("event: progress"):
                break
    assert jobs[0].finished.wait(30)
    assert jobs[0].state == "cancelled"


def test_pngs_dropped_on_the_page_give_back_their_parameters(client):
    entry = run_job(client, seeds="11", steps=2, sampler="euler", **{"class": 6})
    data = client.get(entry["images"][0]["url"]).content
    answer = client.post("/api/pnginfo", content=data).json()
    got = answer["params"]
    assert got["seed"] == 11 and got["class"] == 6 and got["sampler"] == "euler" and got["steps"] == 2
    assert answer["model"] == "tiny"
    elsewhere = encode_png(np.zeros((8, 8, 1), np.uint8), {**got, "model": "/somewhere/else/run"})
    assert client.post("/api/pnginfo", content=elsewhere).json()["model"] == "tiny"  # found by its checksum
    stranger = encode_png(np.zeros((8, 8, 1), np.uint8), {**got, "model": "x", "checksum": "0" * 64})
    assert client.post("/api/pnginfo", content=stranger).json()["model"] is None
    plain = io.BytesIO()
    Image.new("L", (2, 2)).save(plain, format="PNG")
    assert client.post("/api/pnginfo", content=plain.getvalue()).json() == {
        "params": None, "model": None, "message": "this PNG carries no kuosan parameters"}


def test_the_model_card_shows_its_facts_and_its_evaluation_report(client, service, runs):
    card = client.get("/api/card?model=tiny").json()
    pipe = service.models.load("tiny").pipe
    assert card["parameters"] == sum(p.numel() for p in pipe.precond.parameters())
    assert card["dataset"] == "digits" and card["num_classes"] == 10 and card["trained_steps"] == 4
    assert card["report"] is None
    eval_dir = runs / "tiny" / "eval"
    eval_dir.mkdir(exist_ok=True)
    Image.new("RGB", (4, 4)).save(eval_dir / "samples.png")
    (eval_dir / "report.json").write_text(json.dumps({
        "quality": {"fmnist-cnn": {"frechet_distance": {"generated": 1.5, "floor": 0.5}}},
        "plots": ["samples.png", "../secret.png"], "generated": {"images": 100},
        "reference": {"source": "digits:test"}}))
    try:
        card = client.get("/api/card?model=tiny").json()
        assert card["report"]["rows"] == [["Fréchet distance", "fmnist-cnn", "1.500", "0.500"]]
        assert card["report"]["plots"] == ["samples.png"]
        assert client.get("/api/report?model=tiny&file=samples.png").headers["content-type"] == "image/png"
        assert client.get("/api/report?model=tiny&file=../secret.png").status_code == 404
        assert client.get("/api/report?model=tiny&file=report.json").status_code == 404
    finally:
        import shutil

        shutil.rmtree(eval_dir)


def test_only_the_hosts_it_serves_are_answered(service):
    with web((service, ["127.0.0.1", "localhost", "::1"]), base_url="http://127.0.0.1:7860") as c:
        assert c.get("/api/info").status_code == 200
        assert c.get("/api/info", headers={"host": "[::1]:7860"}).status_code == 200
        assert c.get("/api/info", headers={"host": "attacker.example:7860"}).status_code == 421


def test_serve_warns_that_another_host_has_no_login(runs, tmp_path, monkeypatch, capsys):
    uvicorn = pytest.importorskip("uvicorn", reason="kuosan serve needs the web extra: pip install 'kuosan[serve]'")

    from kuosan.cli import main

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))
    common = ["serve", "--checkpoint", str(runs / "tiny"), "--out", str(tmp_path / "g"), "--device", "cpu"]
    assert main(common) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 7860 and "no login" not in capsys.readouterr().err
    assert main([*common, "--host", "0.0.0.0", "--port", "8123"]) == 0
    assert "the page has no login" in capsys.readouterr().err and seen["port"] == 8123
    assert main([*common, "--port", "70000"]) == 2
    assert "--port must be between 1 and 65535" in capsys.readouterr().err
    assert main([*common, "--out", str(runs / "tiny" / "checkpoints")]) == 2
    torch.set_num_threads(1)  # kuosan's command line may have changed it


@pytest.mark.slow  # importing diffusers takes seconds
def test_a_diffusers_model_under_runs_is_offered_and_samples(runs, tmp_path):
    diffusers = pytest.importorskip("diffusers", reason="diffusers is optional: pip install diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 16),
                                 layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))
    where = tmp_path / "runs" / "hub-copy"
    unet.save_pretrained(where)
    diffusers.DDIMScheduler(clip_sample=False).save_pretrained(where)
    import shutil

    shutil.copytree(runs / "tiny", tmp_path / "runs" / "tiny")
    svc = Service(ServeConfig(checkpoint=str(tmp_path / "runs" / "tiny"), runs=str(tmp_path / "runs"),
                              out=str(tmp_path / "g"), device="cpu"))
    try:
        with web((svc,)) as c:
            assert {"name": "hub-copy", "kind": "diffusers"} in c.get("/api/info").json()["models"]
            card = c.get("/api/card?model=hub-copy").json()
            assert card["kind"] == "diffusers" and card["num_classes"] == 0 and card["image"] == [8, 8, 1]
            entry = run_job(c, model="hub-copy", seeds="0-1", sampler="ddim", steps=2)
            _, params = png_at(c, entry["images"][0]["url"])
            assert params["model"] == "hub-copy" and "class" not in params and len(params["checksum"]) == 64
            r = c.post("/api/jobs", json={"model": "hub-copy", "class": 1})
            assert r.status_code == 400 and "unconditional" in r.json()["error"]
    finally:
        svc.close()


def test_a_loaded_model_samples_on_the_auto_backend_prepared_in_the_background(runs, monkeypatch):
    """Without KUOSAN_BACKEND the page's models sample on "auto": the runtime for small calls opens in a
    background thread when the model loads (here a stand-in for ONNX Runtime), and requests run on it."""
    from kuosan.interop import onnx as kx
    from kuosan.serve.forms import parse_request
    from kuosan.serve.jobs import run_request

    opened, calls = threading.Event(), []

    def fake_dispatch(pipe, backend, *a, **k):
        assert backend == "auto"

        def open_runtime():
            opened.set()

            def run(x, sigma, class_labels=None):
                calls.append(x.shape[0])
                return pipe.precond(x, sigma, class_labels)
            return run
        return kx.BatchDispatch(pipe.precond, open_runtime)
    monkeypatch.delenv("KUOSAN_BACKEND", raising=False)
    monkeypatch.setattr(kx, "runtime_denoiser", fake_dispatch)
    loaded = Models(runs / "tiny", runs, device="cpu").load("tiny")
    assert isinstance(loaded.denoiser, kx.BatchDispatch) and opened.wait(10)
    req = parse_request({"model": "tiny", "mode": "generate", "seeds": "3", "steps": 2, "sampler": "euler",
                         "guidance": 1.0}, loaded)
    run_request(req, loaded)
    assert calls == [1, 1]
