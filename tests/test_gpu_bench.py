"""benchmarks/gpu.py runs its whole arithmetic path on the CPU with --dry-run, and says so when no CUDA is here."""

import importlib.util
import json
import math

import pytest
import torch

from conftest import load_benchmark


@pytest.fixture(scope="module")
def gpu():
    return load_benchmark("gpu")


def test_the_dry_run_trains_and_samples_both_networks_on_the_cpu(gpu, tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert gpu.main(["--dry-run", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["dry_run"] and report["device"] == "cpu (dry run)"
    rows = report["results"]["8x8"]
    expected = {"kuosan", "diffusers"} if importlib.util.find_spec("diffusers") else {"kuosan"}
    assert set(rows) == expected
    for row in rows.values():
        for phase in ("train", "forward", "sample"):
            assert math.isfinite(row[f"{phase}_images_per_s"]) and row[f"{phase}_images_per_s"] > 0
            assert row[f"{phase}_peak_bytes"] is None  # peak memory is CUDA's
    if "diffusers" in rows:  # the same widths, blocks and attention: parameter counts within 10%
        assert abs(rows["kuosan"]["params"] / rows["diffusers"]["params"] - 1) < 0.1
    assert "8x8 | kuosan" in capsys.readouterr().out


def test_without_cuda_it_says_so_and_writes_nothing(gpu, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu.json"
    assert gpu.main(["--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == gpu.NO_CUDA
    assert not out.exists()
