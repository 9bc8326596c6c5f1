"""Static clipping and dynamic thresholding of the denoised image (Imagen, Saharia et al. 2022, §2.3)."""

import pytest
import torch

from kuosan.diffusion.thresholding import parse_threshold, threshold_denoiser
from kuosan.errors import KuosanError
from kuosan.config import SampleConfig
from kuosan.sampling import generate


def fixed(d):
    return lambda x, sigma, **kw: d


def test_static_clip_bounds_and_leaves_in_range_values_alone():
    d = torch.linspace(-3, 3, 2 * 1 * 4 * 4).view(2, 1, 4, 4)
    out = threshold_denoiser(fixed(d), "clip")(d, torch.ones(2))
    assert out.min() == -1 and out.max() == 1
    inside = d.abs() <= 1
    assert torch.equal(out[inside], d[inside])


def test_dynamic_threshold_rescales_by_the_quantile_only_when_it_exceeds_one():
    g = torch.Generator().manual_seed(0)
    loud = torch.randn(1, 1, 16, 16, generator=g) * 3  # |D| quantile well above 1
    quiet = torch.rand(1, 1, 16, 16, generator=g) * 1.6 - 0.8  # inside [-1, 1]: untouched
    d = torch.cat([loud, quiet])
    out = threshold_denoiser(fixed(d), 0.9)(d, torch.ones(2))
    s = torch.quantile(loud.abs().flatten(), 0.9)
    torch.testing.assert_close(out[0], loud[0].clamp(-s, s) / s)
    assert out[0].abs().max() <= 1 + 1e-6 and (out[0].abs() > 0.999).float().mean() >= 0.09  # the top 10% saturate
    torch.testing.assert_close(out[1], quiet[0])


def test_generation_with_clipping_stays_in_range():
    class Wide(torch.nn.Module):  # its denoised image overshoots [-1, 1]: D = 3x / (1 + σ)
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(3.0))
            self.sigma_min, self.sigma_max = 0.002, 80.0

        def forward(self, x, sigma, class_labels=None):
            return self.w * x / (1 + sigma.view(-1, 1, 1, 1))

    model = Wide()
    plain = generate(model, SampleConfig("euler", 6), shape=(1, 8, 8), seeds=range(4))
    clipped = generate(model, SampleConfig("euler", 6), shape=(1, 8, 8), seeds=range(4), threshold="clip")
    assert plain.abs().max() > 1 and clipped.abs().max() <= 1
    dynamic = generate(model, SampleConfig("dpmpp_2m", 6), shape=(1, 8, 8), seeds=range(4), threshold=0.995)
    assert dynamic.abs().max() <= 1 + 1e-6


@pytest.mark.parametrize("value,expected", [(None, None), ("none", None), ("clip", "clip"), ("0.995", 0.995),
                                            (0.9, 0.9)])
def test_parse(value, expected):
    assert parse_threshold(value) == expected


@pytest.mark.parametrize("value", ["0", "1", "1.5", "maybe"])
def test_bad_values_are_clear_errors(value):
    with pytest.raises(KuosanError, match="0.995"):
        parse_threshold(value)


def test_cli_refuses_a_bad_threshold_in_one_line(capsys, tmp_path):
    from kuosan.cli import main

    assert main(["sample", "--checkpoint", str(tmp_path), "--threshold", "2", "--n", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kuosan: error:") and "quantile" in err and "\n" not in err
