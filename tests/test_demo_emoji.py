"""`kuosan demo --data emoji`: the latent demo's pipeline end to end on a handful of images and a few steps
(autoencoder, latent model, grid with interpolation rows, losses, evaluation, report), and the autoencoder's
latent cycle-consistency term."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import kuosan
from kuosan import demo
from kuosan.data import emoji
from kuosan.errors import KuosanError


def _emoji_installed() -> bool:
    from kuosan.data import load_dataset

    try:
        load_dataset("emoji:test", max_images=1)
        return True
    except KuosanError:
        return False


TINY = demo.LatentRecipe(
    autoencoder={"cpu": "emoji-demo", "cuda": "emoji-demo"}, diffusion={"cpu": "emoji-ldm", "cuda": "emoji-ldm"},
    per_class=4, interpolations=(("faces", "animals"), ("no-such-class", "faces")), eval_images=(18, 18),
    grid_sample={"guidance": 5.0, "guidance_rescale": 0.7},
    ae_overrides={"max_images": 48, "base_channels": 8, "batch": 8, "log_every": 2, "scale_images": 48},
    overrides={"train.max_images": 48, "model.base_channels": 16, "train.batch": 8, "train.log_every": 2,
               "train.checkpoint_every": 0, "sample.steps": 2},
    ae_steps=4, ldm_steps=4, labels="sub")


def test_the_latent_model_trains_on_the_recipes_labels():
    sub = demo.LATENT_RECIPES["emoji"]
    assert sub.labels == "sub"
    assert demo._latent_specs("emoji", sub) == ("emoji", "emoji:sub")
    assert demo._latent_specs("emoji:twitter", sub) == ("emoji:twitter", "emoji:twitter:sub")
    assert demo._latent_specs("emoji:sub", sub) == ("emoji", "emoji:sub")        # named: the grid takes the 9
    assert demo._latent_specs("emoji:fine", sub) == ("emoji", "emoji:fine")
    assert demo._latent_specs("emoji:noto", sub) == ("emoji:noto", "emoji:noto")  # the font set has its 8 only
    assert demo._latent_specs("emoji", TINY.__class__(**{**TINY.__dict__, "labels": ""})) == ("emoji", "emoji")
    assert demo._model_classes("emoji:sub") == 78 and demo._model_classes("emoji:google") == 9


def test_the_recipe_follows_the_data_set():
    assert demo.LATENT_RECIPES.get(demo.dataset_name("emoji:twitter")) is demo.LATENT_RECIPES["emoji"]
    assert demo.LATENT_RECIPES.get(demo.dataset_name("fashion-mnist")) is None  # the pixel demo, as before
    assert demo.LATENT_RECIPES.get(demo.dataset_name(None)) is None
    with pytest.raises(KuosanError, match="--minutes"):
        demo.run_demo(minutes=0.4, data="emoji", out="unused")


@pytest.mark.skipif(not _emoji_installed(), reason="emoji sources not installed (scripts/install_emoji_data.sh)")
def test_latent_demo_end_to_end(tmp_path, monkeypatch):
    import kuosan.latent

    monkeypatch.setattr(kuosan.latent, "latent_cache_dir", lambda: tmp_path / "latents")
    out = tmp_path / "demo"
    lines = []
    assert demo.run_demo(minutes=2, out=str(out), data="emoji", device="cpu", log=lines.append, recipe=TINY) == 0
    report = json.loads((out / "report.json").read_text())
    ae = report["autoencoder"]
    assert ae["steps"] == 4 and ae["latent_shape"] == [4, 16, 16] and ae["held_out"]
    assert ae["reconstruction_images"] == 963 and 0 < ae["test_psnr"] < 60
    assert report["steps"] == 4 and report["presets"] == {"autoencoder": "emoji-demo", "diffusion": "emoji-ldm"}
    # one row per class, then the one interpolation row whose classes exist; tiles 64 px, doubled
    grid = Image.open(out / "grid.png")
    assert grid.height == 2 * (10 * 66 + 2) and grid.width == 130 + 2 * (4 * 66 + 2)
    with np.load(out / "grid.npz") as f:
        assert f["images"].shape == (36, 64, 64, 3) and list(f["labels"][::4]) == list(range(9))
    assert (out / "loss.png").is_file() and (out / "autoencoder" / "reconstruction.json").is_file()
    ev = report["evaluation"]
    assert ev["generated"]["images"] == 18
    acc = ev["diversity"]["conditional_accuracy"]
    assert 0 <= acc["generated"] <= 1 and 0 <= acc["floor"] <= 1
    md = (out / "report.md").read_text()
    assert "faces → animals" in md and "conditional accuracy" in md and "PSNR" in md
    assert "training noise ln σ ~ N(-0.5, 1.2²)" in md  # the recipe's noise levels, stated
    # the grid is guided as the recipe says, the evaluation as the model's own sample section
    assert report["grid_sample"] == {"guidance": 5.0, "guidance_rescale": 0.7} and report["guidance"] == 3.0
    assert 0 <= report["grid_conditional_accuracy"] <= 1
    assert "guidance 5, guidance rescale 0.7; the evaluation below samples at the model's own guidance 3" in md
    after = report["after_training"]
    assert after["kept_seconds"] > 0 and after["spent_seconds"] > 0
    assert f"{after['kept_seconds']:.0f} s kept for what follows training" in md
    assert "conditions on `emoji:sub`, 78 finer labels" in md
    # the latent model conditions on the 78 subcategories; a row draws its class's, the grid's labels are classes
    pipe = kuosan.load(out / "ldm")
    assert pipe.class_names == emoji.SUBCATEGORIES and pipe.dataset == "emoji:sub"
    labels, classes = emoji.labels_by_group(pipe.class_names, 4)
    groups = emoji.groups_of(pipe.class_names)
    assert [groups[c] for c in labels] == classes == [g for g in range(9) for _ in range(4)]
    again = pipe.sample(list(range(36)), labels, guidance=5.0, guidance_rescale=0.7, batch_size=128)
    with np.load(out / "grid.npz") as f:
        assert np.array_equal(f["images"], again.images)
    # asked for a class by name, the model draws it from that class's subcategories, a label per seed
    animals = pipe.labels_for(list(range(8)), "Animals")
    assert {pipe.class_names[c] for c in animals} <= set(emoji.CLASSES["animals"]) and len(set(animals)) > 1
    assert pipe.labels_for([5], "animals") == animals[5:6] and pipe.labels_for([0, 1], ["animals", 3]) == [animals[0], 3]
    assert pipe.labels_for([0], "animal-bird") == [emoji.SUBCATEGORIES.index("animal-bird")]
    with pytest.raises(KuosanError, match="unknown class 'unicorns'.*or one of the classes they fall in: faces"):
        pipe.labels_for([0], "unicorns")
    with pytest.raises(KuosanError, match="unknown class 'animals'; classes: face-smiling") as e:
        pipe.class_index("animals")                                    # one class, where a group is no answer
    assert "fall in" not in str(e.value)
    _doors_that_take_one_class_take_a_group_too(pipe, out / "ldm", animals, tmp_path)


def _doors_that_take_one_class_take_a_group_too(pipe, run, animals, tmp_path):
    """`kuosan edit` and the page take "animals" on an emoji:sub model as labels_for does, seed by seed."""
    from kuosan.cli import main
    from kuosan.serve.card import model_card
    from kuosan.serve.forms import parse_request
    from kuosan.serve.models import Loaded, ModelEntry

    assert pipe.groups == emoji.CLASS_NAMES
    assert [pipe.class_for("animals", s) for s in range(8)] == animals and pipe.class_for(3, 5) == 3
    assert pipe.class_for("animal-bird") == emoji.SUBCATEGORIES.index("animal-bird")
    with pytest.raises(KuosanError, match="or one of the classes they fall in"):
        pipe.class_for("unicorns")
    loaded = Loaded(entry=ModelEntry("ldm", run, "kuosan"), pipe=pipe, checksum="")
    card = model_card(loaded)
    assert card["groups"] == emoji.CLASS_NAMES and card["group_sizes"]["animals"] == len(emoji.CLASSES["animals"])
    req = parse_request({"class": " Animals", "seeds": "0-7"}, loaded)
    assert list(req.labels) == animals and req.label == animals[0] and req.params()["class"] == "animals"
    req = parse_request({"class": "animals", "seeds": "5", "mode": "interpolate", "class_b": "plants"}, loaded)
    assert req.label == animals[5] and req.group == "animals"
    assert emoji.SUBCATEGORIES[req.class_b] in emoji.CLASSES["plants"]
    assert parse_request({"class": "4", "seeds": "0-1"}, loaded).labels == (4, 4)
    with pytest.raises(KuosanError, match="second class: unknown class 'unicorns'"):
        parse_request({"class": "animals", "mode": "interpolate", "class_b": "unicorns"}, loaded)
    strip = tmp_path / "strip"
    assert main(["edit", "interpolate", "--checkpoint", str(run), "--classes", "faces,animals", "--seeds", "3",
                 "--n", "2", "--steps", "2", "--out", str(strip)]) == 0
    assert len(list(strip.glob("*.png"))) >= 1
    # every edit mode on a latent model: inputs encoded, results decoded to 64x64 RGB pictures
    pic = Image.open(strip / "interpolate.png")                          # two 64-px RGB tiles, doubled: not latents
    assert pic.size == (2 * (2 * 66 + 2), 2 * 68) and pic.mode == "RGB"
    Image.new("RGB", (64, 64), (200, 120, 40)).save(tmp_path / "in.png")
    for args, made in ((["img2img", "--class", "animals", "--seed", "5"], "in_img2img.png"),
                       (["inpaint", "--box", "8,8,40,40"], "in_inpaint.png"),
                       (["invert"], "in_reconstruction.png")):
        assert main(["edit", args[0], "--input", str(tmp_path / "in.png"), *args[1:], "--checkpoint", str(run),
                     "--steps", "2", "--out", str(tmp_path / args[0])]) == 0
        pic = Image.open(tmp_path / args[0] / made)
        assert pic.size == (64, 64) and pic.mode == "RGB", args[0]
    # input | kept | result, 64-px tiles doubled: the kept tile is black over the box (pixels 8-40), not elsewhere
    kept = np.asarray(Image.open(tmp_path / "inpaint" / "inpaint.png"))[4:132, 136:264]
    assert (kept[16:80, 16:80] == 0).all() and kept[90:, 90:].mean() > 50
    assert main(["edit", "interpolate", "--class", "animals", "--seeds", "3,17", "--n", "2", "--checkpoint", str(run),
                 "--steps", "2", "--out", str(tmp_path / "slerp")]) == 0


def test_a_second_demo_starts_afresh_and_a_foreign_directory_is_refused(tmp_path):
    out = tmp_path / "demo"
    demo._prepare_out(str(out), ("autoencoder", "ldm"))
    (out / "autoencoder" / "checkpoints").mkdir(parents=True)
    (out / "grid.png").write_bytes(b"old")
    demo._prepare_out(str(out), ("autoencoder", "ldm"))
    assert not (out / "autoencoder").exists() and (out / "grid.png").exists()  # outputs are overwritten later
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(KuosanError, match="not a demo directory"):
        demo._prepare_out(str(tmp_path / "other"), ("train",))


def test_latent_cycle_loss_is_scale_free_and_targets_the_first_latent():
    from kuosan.training.autoencoder import latent_cycle_loss

    class Posterior:
        def __init__(self, mean):
            self.mean = mean

    torch.manual_seed(0)
    mu = torch.randn(4, 2, 3, 3)
    identity = lambda x: Posterior(x)  # noqa: E731: an encoder that reads x̂ back exactly
    assert float(latent_cycle_loss(identity, mu.clone(), mu)) == 0.0
    x_hat = (mu + 0.1 * torch.randn_like(mu)).requires_grad_()
    loss = latent_cycle_loss(identity, x_hat, mu)
    assert float(loss.detach()) == pytest.approx(float(((x_hat.detach() - mu) ** 2).mean() / mu.var()), rel=1e-6)
    # the same relative error at ten times the latent scale gives the same loss
    assert float(latent_cycle_loss(identity, 10 * x_hat.detach(), 10 * mu)) == pytest.approx(float(loss.detach()), rel=1e-5)
    target = mu.clone().requires_grad_()
    latent_cycle_loss(identity, x_hat, target).backward()
    assert target.grad is None and x_hat.grad is not None  # sg(μ(x)): only the reconstruction's path moves


def test_cycle_weight_trains_and_logs_the_term(tmp_path):
    from kuosan.training.autoencoder import AutoencoderTrainConfig, train_autoencoder

    cfg = AutoencoderTrainConfig(data="digits", latent_channels=2, downsample=2, base_channels=8, perceptual="none",
                                 cycle_weight=0.5, steps=4, batch=16, warmup_steps=1, log_every=2,
                                 checkpoint_every=0, scale_images=64, out=str(tmp_path / "ae"), device="cpu")
    out = train_autoencoder(cfg, log=lambda *a: None)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4] and all(r["cycle"] > 0 for r in rows)
    with pytest.raises(KuosanError, match="cycle_weight"):
        train_autoencoder(AutoencoderTrainConfig(cycle_weight=-1.0, out=str(tmp_path / "bad")))


@pytest.mark.skipif(not _emoji_installed(), reason="emoji sources not installed (scripts/install_emoji_data.sh)")
def test_emoji_classifier_reaches_its_recorded_accuracy():
    from kuosan.data import load_dataset
    from kuosan.evaluation.classifier import load_classifier, predict

    model, meta = load_classifier("emoji-cnn")
    test = load_dataset("emoji:test")
    accuracy = float((predict(model, test.images).argmax(1) == test.labels.numpy()).mean())
    assert accuracy == pytest.approx(meta["test_accuracy"], abs=2e-3)
    assert accuracy >= 0.6  # 9 classes of emoji it never saw in training; the largest class is 25% of the test split


def test_training_grid_of_a_many_class_model_is_capped():
    """A run of 936 classes (emoji:fine) ends with a sample grid of GRID_ROWS rows spread over its classes,
    not 9,360 images."""
    from kuosan.training.loop import GRID_ROWS, _class_grid_labels

    labels = _class_grid_labels(936, 10)
    rows = sorted(set(labels))
    assert len(labels) == 10 * GRID_ROWS and len(rows) == GRID_ROWS
    assert rows[0] == 0 and rows[-1] == 935
    assert _class_grid_labels(9, 2) == [c for c in range(9) for _ in range(2)]
    assert _class_grid_labels(0, 10) is None


@pytest.mark.skipif(not _emoji_installed(), reason="emoji sources not installed (scripts/install_emoji_data.sh)")
def test_the_time_kept_after_training_follows_the_measured_speeds():
    from kuosan.config import load_config, resolve_config_path
    from kuosan.diffusion.samplers import nfe

    cfg = load_config(None, TINY.overrides, base=resolve_config_path("emoji-ldm"))
    grid = 4 * (2 * 9 + 2)  # the closing grid and the labelled one: 4 a class; the interpolation rows
    kept = demo._after_training_seconds
    # a decoding a second, the networks free: one second an image sampled, 30 s for the rest
    assert kept(TINY, cfg, "emoji", 0.0, 1.0, {}, False) == pytest.approx(grid + 30)
    assert kept(TINY, cfg, "emoji", 0.0, 1.0, {"a": 0.1, "b": 0.1}, True) == pytest.approx(
        grid + 30 + 20 + (18 * (1 + 1.2 * 0.2) + 15) / 0.9 + 1.2 * grid * 0.2)
    # a network evaluation a second when sampling, with the margin: twice an image's evaluations with guidance
    grid_evals = 2 * nfe(cfg.sample.sampler, cfg.sample.steps)
    assert kept(TINY, cfg, "emoji", 1.0, 0.0, {}, False) == pytest.approx(grid * grid_evals * 1.2 + 30)
    fast, slow = (kept(demo.LATENT_RECIPES["emoji"], cfg, "emoji", e, 0.01, {"a": 0.02}, True) for e in (1e-3, 2e-3))
    assert fast < slow
    # a model of the 78 subcategories: the loop's closing grid has GRID_ROWS rows, the labelled one 9
    sub = load_config(None, {**TINY.overrides, "train.data": "emoji:sub"}, base=resolve_config_path("emoji-ldm"))
    assert kept(TINY, sub, "emoji", 0.0, 1.0, {}, False) == pytest.approx(4 * (16 + 9 + 2) + 30)


def test_the_sampling_probe_measures_one_network_evaluation(tmp_path):
    """The probe's seconds for one network evaluation of one image, from runs of 1 and 5 Euler steps (the noise,
    decoding and overhead cancel): positive, and milliseconds for a small network."""
    from kuosan.config import load_config, resolve_config_path
    from kuosan.training.loop import train

    cfg = load_config(None, {"train.out": str(tmp_path / "r"), "train.steps": 2, "train.checkpoint_every": 0,
                             "sample.sampler": "euler", "sample.steps": 1}, base=resolve_config_path("digits-tiny"))
    train(cfg, progress=False, log=lambda *a: None)
    per_eval = demo._network_seconds(tmp_path / "r", "cpu", n=64)
    assert 0 < per_eval < 0.05


def test_the_evaluation_samples_what_the_time_kept_for_it_allows():
    """The count the evaluation picks from the time it has left is the count the time kept for it was planned for,
    and fewer when the machine slowed down meanwhile."""
    count = demo._eval_count
    p, f, n_range = 0.05, 0.03, (270, 900)
    planned = 20 * p + (900 * (p + 1.2 * f) + 15) / 0.9  # what _after_training_seconds keeps for 900
    assert count(planned, p, f, n_range) == 900
    assert count(planned, 2 * p, 2 * f, n_range) < 900 and count(planned, 2 * p, 2 * f, n_range) >= 270
    assert count(1e6, p, f, n_range) == 900 and count(0.0, p, f, n_range) == 270
    assert count(60.0, p, None, n_range) == int(0.6 * 60 / p)  # feature speeds unknown: 40% left for them


@pytest.mark.skipif(not _emoji_installed(), reason="emoji sources not installed (scripts/install_emoji_data.sh)")
def test_references_prepared_before_training_are_what_the_evaluation_finds(tmp_path, monkeypatch):
    from kuosan.data import load_dataset
    from kuosan.evaluation.report import EvalConfig, evaluate, prepare_references

    import kuosan.evaluation.reference

    monkeypatch.setattr(kuosan.evaluation.reference, "cache_dir", lambda: tmp_path / "cache")
    cfg = EvalConfig(extractors=["emoji-cnn"], max_real=40, shipped_stats=False)
    done = prepare_references("emoji:test", cfg, train_reference="emoji:train", resolution=64, channels=3, probe=8)
    assert set(done["per_image"]) == {"emoji-cnn"} and done["per_image"]["emoji-cnn"] > 0
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 2  # the test split and the training split
    generated = load_dataset("emoji:train", max_images=12).images.numpy()
    report = evaluate(generated, "emoji:test", cfg, train_reference="emoji:train")
    ext = report["extractors"]["emoji-cnn"]
    assert ext["reference_from"] == "cache" and ext["train_reference_from"] == "cache"


@pytest.mark.skipif(not _emoji_installed(), reason="emoji sources not installed (scripts/install_emoji_data.sh)")
def test_kuosan_evaluate_samples_a_subcategory_model_by_class(tmp_path):
    """`kuosan evaluate --checkpoint` on the demo's model (emoji:sub): seed k of class k mod 9, drawn from its
    subcategories; scored and saved as the 9 classes, the model's own labels beside them."""
    from types import SimpleNamespace

    from kuosan.cli.evaluate import sample_checkpoint

    asked = {}

    class Pipe:
        num_classes, dataset, class_names = 78, "emoji:sub", emoji.SUBCATEGORIES

        def sample(self, seeds, class_labels, **kw):
            asked["labels"] = list(class_labels)
            kw["progress"](len(seeds))
            return SimpleNamespace(images=np.zeros((len(seeds), 8, 8, 3), np.uint8), labels=np.array(class_labels),
                                   nfe=1)

    args = SimpleNamespace(sampler="euler", steps=1, guidance=1.0, batch=8, bf16=False, threshold=None,
                           checkpoint="runs/demo-emoji/ldm")
    images, _ = sample_checkpoint(args, Pipe(), list(range(18)), "cpu", tmp_path, lambda *a: None)
    groups = emoji.groups_of(emoji.SUBCATEGORIES)
    assert images.labels.tolist() == [k % 9 for k in range(18)]
    assert [groups[c] for c in asked["labels"]] == [k % 9 for k in range(18)]
    with np.load(tmp_path / "samples.npz") as f:
        assert f["labels"].tolist() == [k % 9 for k in range(18)] and f["model_labels"].tolist() == asked["labels"]
