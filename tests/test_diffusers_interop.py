"""A local diffusers UNet2DModel + scheduler config as a kuosan denoiser: kuosan's deterministic DDIM
reproduces diffusers' own DDIM loop; hub names, pickles and missing schedulers are refused; the model
samples with other kuosan samplers and takes LoRA adapters and a class embedding for fine-tuning.

Correspondence (see kuosan.interop.diffusers): kuosan's x starts at σ_0 · noise in the σ view, diffusers'
sample is the same state in the VP view, x_vp = x / sqrt(1 + σ_0²); the σ grid is σ(t) at the scheduler's
timesteps with 0 appended (DDIM with ``set_alpha_to_one=True`` ends at ᾱ = 1).
"""

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is optional: pip install diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

from kuosan.diffusion.precond import EpsPrecond, VPrecond, X0Precond  # noqa: E402
from kuosan.diffusion.samplers import sample_ddim  # noqa: E402
from kuosan.diffusion.schedules import append_zero  # noqa: E402
from kuosan.errors import KuosanError  # noqa: E402
from kuosan.interop.diffusers import load_diffusers_unet, load_for_training  # noqa: E402
from kuosan.nets.lora import add_lora  # noqa: E402
from kuosan.pipeline import Pipeline  # noqa: E402


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("diffusers") / "unet"
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(32, 64),
                                 layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    unet.save_pretrained(path)
    return path, unet.eval()


CASES = [("epsilon", "linear", {}, EpsPrecond),
         ("v_prediction", "scaled_linear", {"beta_start": 0.00085, "beta_end": 0.012}, VPrecond),
         ("sample", "squaredcos_cap_v2", {}, X0Precond)]


@pytest.mark.parametrize("prediction, schedule, betas, cls", CASES)
def test_kuosan_ddim_reproduces_diffusers_ddim(unet_dir, prediction, schedule, betas, cls):
    path, unet = unet_dir
    scheduler = diffusers.DDIMScheduler(beta_schedule=schedule, prediction_type=prediction, clip_sample=False,
                                        **betas)
    scheduler.save_pretrained(path)
    precond = load_diffusers_unet(path)
    assert type(precond) is cls
    assert torch.equal(precond.schedule.alpha_bar.float(), scheduler.alphas_cumprod)
    scheduler.set_timesteps(8)
    sigmas = append_zero(precond.schedule.t_to_sigma(scheduler.timesteps.double()))
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * sigmas[0].float()
    ours = sample_ddim(precond, x, sigmas.float())
    x_vp = x / (1 + sigmas[0] ** 2).sqrt().float()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x_vp = scheduler.step(unet(x_vp, t).sample, t, x_vp).prev_sample
    # A random ε-network's "images" are far outside [-1, 1]: compare at float32 rounding of their size.
    scale = max(1.0, float(x_vp.abs().max()))
    assert (ours - x_vp).abs().max() < 1e-6 * scale + 1e-5


def test_hub_names_are_refused_without_network(monkeypatch):
    import huggingface_hub

    def no_network(*a, **k):
        raise AssertionError("a download was attempted")

    for name in ("hf_hub_download", "snapshot_download", "model_info"):
        monkeypatch.setattr(huggingface_hub, name, no_network, raising=False)
    monkeypatch.setattr(diffusers.UNet2DModel, "from_pretrained", no_network)
    with pytest.raises(KuosanError, match="never downloads: if it is a Hugging Face hub name"):
        load_diffusers_unet("google/ddpm-cifar10-32")
    with pytest.raises(KuosanError, match="never downloads"):
        Pipeline.load("google/ddpm-cifar10-32")


def test_pickles_and_missing_schedulers_are_refused(unet_dir, tmp_path):
    path, _ = unet_dir
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(KuosanError, match="no scheduler_config.json"):
        load_diffusers_unet(bare)
    diffusers.DDIMScheduler().save_pretrained(bare)
    (bare / "diffusion_pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(KuosanError, match="never pickle"):
        load_diffusers_unet(bare)


def test_pipeline_samples_with_kuosan_samplers(unet_dir):
    path, _ = unet_dir
    diffusers.DDIMScheduler(clip_sample=False).save_pretrained(path)
    pipe = Pipeline.load(path, device="cpu")
    assert pipe.image_shape == (1, 16, 16) and pipe.num_classes == 0
    for sampler in ("ddim", "dpmpp_2m", "heun"):
        res = pipe.sample([0, 1], sampler=sampler, steps=3, schedule="karras" if sampler == "heun" else None)
        assert res.images.shape == (2, 16, 16, 1)


def test_fine_tuning_structure_starts_as_the_parent(unet_dir):
    path, _ = unet_dir
    diffusers.DDIMScheduler(clip_sample=False).save_pretrained(path)
    parent = load_diffusers_unet(path)
    x, sigma = torch.randn(2, 1, 16, 16), torch.tensor([0.5, 4.0])
    with torch.no_grad():
        ref = parent(x, sigma)
        child, spec, info = load_for_training(path, num_classes=10)
        assert spec["fields"]["num_classes"] == 10 and info["weights_sha256"]
        for labels in (torch.tensor([0, 9]), torch.tensor([10, 10]), None):  # zero class embedding, null row 10
            assert torch.equal(child.eval()(x, sigma, labels), ref)
        layers = add_lora(child, rank=2, targets="attn,conv")
        assert any(n.endswith("to_q") for n in layers)
        assert torch.equal(child(x, sigma, torch.tensor([3, 4])), ref)
