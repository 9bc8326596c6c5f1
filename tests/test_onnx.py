"""ONNX export and runtime-backed denoisers (kuosan.interop.onnx): the preconditioning stays kuosan's, so
a denoiser whose network runs on ONNX Runtime or OpenVINO samples eager torch's images to rounding.

The fast tests check the plumbing with the torch network standing in for a runtime; the ones that export
(torch's exporter takes 10-40 s here) are marked slow and need ``pip install onnx onnxscript onnxruntime``.
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import kuosan
from kuosan.cli import main
from kuosan.diffusion.precond import PRECONDS, EpsPrecond, build_precond
from kuosan.errors import KuosanError
from kuosan.interop import onnx as kx
from kuosan.sampling import generate

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def pipe():
    return kuosan.load(FIXTURES / "v1-run", device="cpu")  # a conditional EDM UNet, 8x8, trained 4 steps


def _torch_runtime(net):
    """The torch network behind the runtimes' interface: {name: ndarray} -> ndarray."""
    def run(feeds):
        with torch.inference_mode():
            labels = torch.from_numpy(feeds["class_labels"]) if "class_labels" in feeds else None
            return net(torch.from_numpy(feeds["x"]), torch.from_numpy(feeds["c_noise"]), labels).numpy()
    return run


def _fake_export(tmp_path, pipe) -> Path:
    """The JSON an export writes, without the exporter (the network file is never opened: ``run`` is given)."""
    meta = {"format": kx.FORMAT, "version": 1, "network": {"file": "network.onnx", "inputs": ["x", "c_noise",
            "class_labels"]}, "precond": kx.precond_record(pipe.precond), "num_classes": pipe.num_classes,
            "image_shape": list(pipe.image_shape), "decoder": None}
    (tmp_path / kx.META).write_text(json.dumps(meta))
    return tmp_path


@pytest.mark.parametrize("kind", PRECONDS)
def test_the_preconditioning_rebuilds_from_its_record(kind):
    precond = build_precond(kind, nn.Identity(), sigma_data=0.7, sigma_min=0.01, sigma_max=50.0, timesteps=500,
                            beta_schedule="cosine")
    record = json.loads(json.dumps(kx.precond_record(precond)))
    assert record["rebuildable"] and record["kind"] == kind
    rebuilt = kx.precond_from_record(record, nn.Identity())
    sigma = torch.tensor([0.02, 0.3, 1.0, 20.0])
    for a, b in zip([*precond.scalings(sigma), precond.noise_cond(sigma)],
                    [*rebuilt.scalings(sigma), rebuilt.noise_cond(sigma)]):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))


def test_a_schedule_kuosan_does_not_build_is_marked_and_refused():
    from kuosan.interop.diffusers import DiffusersVP

    schedule = DiffusersVP({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012})
    record = kx.precond_record(EpsPrecond(nn.Identity(), schedule))
    assert record["rebuildable"] is False
    with pytest.raises(KuosanError, match="cannot be rebuilt"):
        kx.precond_from_record(record, nn.Identity())


def test_the_runtime_denoiser_is_the_models_arithmetic(tmp_path, pipe):
    den = kx.OnnxDenoiser(_fake_export(tmp_path, pipe), run=_torch_runtime(pipe.precond.net), precond=pipe.precond)
    assert den.precond.net is den.net and pipe.precond.net is not den.net  # the model itself is untouched
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, *pipe.image_shape, generator=g).contiguous(memory_format=torch.channels_last)
    sigma, labels = torch.tensor([0.01, 1.0, 60.0]), torch.tensor([0, 4, 10])
    with torch.inference_mode():
        assert torch.equal(den(x, sigma, labels), pipe.precond(x, sigma, labels))
        assert torch.equal(den(x, 2.0), pipe.precond(x, 2.0))  # no labels: the null class, as in torch


def test_sampling_through_the_runtime_interface_gives_the_same_images(tmp_path, pipe):
    rebuilt = kx.OnnxDenoiser(_fake_export(tmp_path, pipe), run=_torch_runtime(pipe.precond.net))  # from the JSON
    kw = dict(shape=pipe.image_shape, seeds=[0, 1, 2], class_labels=[1, 2, 3], null_label=10)
    cfg = pipe.sample_config
    expected = generate(pipe.precond, cfg, **kw)
    assert torch.equal(generate(rebuilt.precond, cfg, denoiser=rebuilt, **kw), expected)


def test_backends_and_precisions_are_checked(pipe, monkeypatch):
    assert kx.runtime_denoiser(pipe, "torch") is pipe.precond
    with pytest.raises(KuosanError, match="unknown backend 'tensorrt'"):
        kx.runtime_denoiser(pipe, "tensorrt")
    with pytest.raises(KuosanError, match="unknown precision"):
        kx.open_runtime("network.onnx", "onnxruntime", precision="float16")
    for module, command in (("onnxruntime", "pip install onnxruntime"), ("openvino", "pip install openvino")):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
        with pytest.raises(KuosanError, match=command):
            kx.runtime_denoiser(pipe, module)


def test_onnxruntime_refuses_bfloat16_in_one_line():
    pytest.importorskip("onnxruntime")
    with pytest.raises(KuosanError, match="float32 only"):
        kx.open_runtime("network.onnx", "onnxruntime", precision="bfloat16")


def test_a_directory_that_is_no_export_says_how_to_make_one(tmp_path):
    with pytest.raises(KuosanError, match="kuosan export --onnx"):
        kx.OnnxDenoiser(tmp_path)


def test_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export", "--onnx", str(tmp_path / "o"), "--checkpoint", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kuosan: error:") and "\n" not in err


# --- exporting (slow) -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("onnxscript")
    out = tmp_path_factory.mktemp("onnx") / "v1"
    assert main(["export", "--onnx", str(out), "--checkpoint", str(FIXTURES / "v1-run")]) == 0
    return out


def _backends():
    return [pytest.param(b, marks=pytest.mark.skipif(not _installed(b), reason=f"pip install {b}"))
            for b in ("onnxruntime", "openvino")]


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.slow
@pytest.mark.parametrize("backend", _backends())
def test_exported_networks_sample_the_same_images(exported, pipe, backend):
    kw = dict(shape=pipe.image_shape, seeds=list(range(5)), class_labels=[0, 3, 5, 7, 9], null_label=10)
    cfg = pipe.sample_config
    expected = generate(pipe.precond, cfg, **kw)
    scale = expected.abs().max()
    for den in (kx.OnnxDenoiser(exported, backend, threads=1, precond=pipe.precond),
                kx.OnnxDenoiser(exported, backend, threads=1)):  # the model's preconditioning, and the JSON's
        got = generate(den.precond, cfg, denoiser=den, **kw)
        assert (got - expected).abs().max() <= 1e-5 * scale
    guided = generate(pipe.precond, cfg.__class__(**{**cfg.__dict__, "guidance": 2.0}), denoiser=den, **kw)
    assert torch.isfinite(guided).all()  # guidance doubles the batch: the batch dimension is dynamic


@pytest.mark.slow
@pytest.mark.parametrize("backend", _backends())
def test_one_image_a_call_works_too(exported, pipe, backend):
    den = kx.OnnxDenoiser(exported, backend, threads=1, precond=pipe.precond)
    x = torch.randn(1, *pipe.image_shape)
    with torch.inference_mode():
        assert (den(x, 3.0, torch.tensor([2])) - pipe.precond(x, 3.0, torch.tensor([2]))).abs().max() < 1e-4


@pytest.mark.slow
def test_runtime_denoiser_exports_once_per_set_of_weights(pipe, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    first = kx.runtime_denoiser(pipe, "onnxruntime", threads=1, cache_dir=tmp_path)
    entries = list(tmp_path.iterdir())
    assert len(entries) == 1 and (entries[0] / "network.onnx").is_file()
    mtime = (entries[0] / "network.onnx").stat().st_mtime_ns
    second = kx.runtime_denoiser(pipe, "onnxruntime", threads=1, cache_dir=tmp_path)
    assert (entries[0] / "network.onnx").stat().st_mtime_ns == mtime and list(tmp_path.iterdir()) == entries
    x = torch.randn(2, *pipe.image_shape)
    with torch.inference_mode():
        assert torch.equal(first(x, 1.0), second(x, 1.0))


@pytest.mark.slow
def test_a_latent_models_decoder_exports_with_its_scale(tmp_path, pipe):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from kuosan.latent import load_autoencoder

    ae = load_autoencoder(FIXTURES / "v1-autoencoder", device="cpu")
    meta = kx.export_onnx(pipe.precond, tmp_path, image_shape=pipe.image_shape, num_classes=pipe.num_classes,
                          autoencoder=ae)
    assert meta["decoder"]["scale"] == ae.scale
    z = torch.randn(3, *ae.latent_shape)
    got = kx.open_runtime(tmp_path / "decoder.onnx", "onnxruntime", threads=1)({"z": z.numpy()})
    assert np.abs(got - ae.decode(z).numpy()).max() < 1e-4


@pytest.mark.slow
def test_verify_prints_the_difference(tmp_path, exported, capsys):
    pytest.importorskip("onnxruntime")
    shutil.copytree(FIXTURES / "v1-run", tmp_path / "run")
    assert main(["export", "--onnx", str(tmp_path / "o"), "--checkpoint", str(tmp_path / "run"),
                 "--verify", "onnxruntime"]) == 0
    out = capsys.readouterr().out
    assert "network.onnx" in out and "largest |D_onnx - D_torch|" in out


def test_pipeline_sample_refuses_an_unknown_backend_in_one_line():
    from pathlib import Path

    import kuosan
    from kuosan.errors import KuosanError

    pipe = kuosan.load(Path(__file__).parent / "fixtures" / "v1-run", device="cpu")
    with pytest.raises(KuosanError, match="unknown backend 'tpu'"):
        pipe.sample([0], steps=2, backend="tpu")
    with pytest.raises(KuosanError, match="threads"):
        pipe.sample([0], steps=2, backend="onnxruntime", threads=0)


@pytest.mark.slow
def test_pipeline_sample_on_onnxruntime_gives_the_same_images():
    from pathlib import Path

    import numpy as np

    import kuosan

    pytest.importorskip("onnxruntime")
    pipe = kuosan.load(Path(__file__).parent / "fixtures" / "v1-run", device="cpu")
    eager = pipe.sample([0, 1], sampler="euler", steps=3)
    runtime = pipe.sample([0, 1], sampler="euler", steps=3, backend="onnxruntime", threads=1)
    assert np.abs(eager.images.astype(int) - runtime.images.astype(int)).max() <= 1


# --- "auto": small calls on ONNX Runtime, large ones on eager torch --------------------------------

@pytest.fixture
def fake_onnxruntime(monkeypatch, tmp_path, pipe):
    """ONNX Runtime "installed", the export a JSON file and the runtime the torch network; counts its calls."""
    calls = []
    run = _torch_runtime(pipe.precond.net)

    def counted(feeds):
        calls.append(feeds["x"].shape[0])
        return run(feeds)
    monkeypatch.setattr(kx, "_importable", lambda *m: True)
    monkeypatch.setattr(kx, "_cached_export", lambda p, cache: _fake_export(tmp_path, p))
    monkeypatch.setattr(kx, "open_runtime", lambda *a, **k: counted)
    return calls


def test_auto_sends_calls_of_up_to_four_images_to_onnxruntime(pipe, fake_onnxruntime):
    den = kx.runtime_denoiser(pipe, "auto")
    assert isinstance(den, kx.BatchDispatch) and kx.AUTO_MAX_BATCH == 4
    with torch.inference_mode():
        for b in (1, 4, 5, 9):
            x, labels = torch.randn(b, *pipe.image_shape), torch.arange(b) % pipe.num_classes
            assert (den(x, 2.0, labels) - pipe.precond(x, 2.0, labels)).abs().max() < 1e-5
    assert fake_onnxruntime == [1, 4]


def test_auto_is_eager_torch_in_bfloat16_and_without_onnxruntime(pipe, monkeypatch):
    monkeypatch.setattr(kx, "_importable", lambda *m: True)
    assert kx.runtime_denoiser(pipe, "auto", precision="bfloat16") is pipe.precond
    monkeypatch.setattr(kx, "_importable", lambda *m: False)
    assert kx.runtime_denoiser(pipe, "auto") is pipe.precond


def test_pipeline_samples_on_auto_by_default(pipe, fake_onnxruntime, monkeypatch):
    monkeypatch.delenv("KUOSAN_BACKEND", raising=False)
    one = pipe.sample([5], steps=2, sampler="euler")
    assert fake_onnxruntime == [1, 1]  # Euler, 2 steps: two calls of one image
    assert np.array_equal(one.images, pipe.sample([5], steps=2, sampler="euler", backend="torch").images)
    fake_onnxruntime.clear()
    many = pipe.sample(list(range(8)), steps=2, sampler="euler", batch_size=8)
    assert fake_onnxruntime == [] and np.array_equal(
        many.images, pipe.sample(list(range(8)), steps=2, sampler="euler", batch_size=8, backend="torch").images)


def test_kuosan_backend_chooses_the_default_and_a_wrong_one_is_one_line(pipe, monkeypatch, fake_onnxruntime):
    monkeypatch.setenv("KUOSAN_BACKEND", "torch")
    pipe.sample([5], steps=2, sampler="euler")
    assert fake_onnxruntime == []
    monkeypatch.setenv("KUOSAN_BACKEND", "tensorrt")
    with pytest.raises(KuosanError, match="KUOSAN_BACKEND=tensorrt: use one of auto, torch"):
        pipe.sample([5], steps=2)


def test_auto_samples_on_eager_torch_with_one_line_when_the_export_fails(pipe, monkeypatch, capsys):
    def fails(p, cache):
        raise KuosanError("torch could not export this network to ONNX: no")
    monkeypatch.setattr(kx, "_importable", lambda *m: True)
    monkeypatch.setattr(kx, "_cached_export", fails)
    den = kx.runtime_denoiser(pipe, "auto")
    x = torch.randn(1, *pipe.image_shape)
    with torch.inference_mode():
        assert torch.equal(den(x, 1.0), pipe.precond(x, 1.0)) and torch.equal(den(x, 1.0), pipe.precond(x, 1.0))
    assert capsys.readouterr().err.count("sampling on eager torch: torch could not export") == 1


@pytest.mark.slow
def test_auto_on_onnxruntime_samples_eager_torchs_images(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    monkeypatch.setenv("KUOSAN_CACHE", str(tmp_path))
    pipe = kuosan.load(FIXTURES / "v1-run", device="cpu")
    auto = pipe.sample([0], sampler="euler", steps=3, backend="auto")
    assert list((tmp_path / "onnx").iterdir())  # exported on the first call
    eager = pipe.sample([0], sampler="euler", steps=3, backend="torch")
    assert np.abs(auto.images.astype(int) - eager.images.astype(int)).max() <= 1


def test_pipeline_reuses_its_runtime_until_the_weights_change(pipe, fake_onnxruntime, monkeypatch):
    opened = []
    real = kx.runtime_denoiser
    monkeypatch.setattr("kuosan.pipeline.runtime_denoiser", lambda *a, **k: opened.append(1) or real(*a, **k))
    pipe.sample([1], steps=2, sampler="euler", backend="auto")
    pipe.sample([2], steps=2, sampler="euler", backend="auto")
    assert len(opened) == 1
    pipe.precond.load_state_dict(pipe.precond.state_dict())  # an in-place change of the weights
    pipe.sample([1], steps=2, sampler="euler", backend="auto")
    assert len(opened) == 2
