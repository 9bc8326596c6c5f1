"""Configs: bad keys, types and values give one KuosanError naming the key; nothing else escapes."""

import dataclasses
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kuosan.diffusion.precond import PRECONDS
from kuosan.config import (Config, config_from_dict, config_to_dict, load_config, preset_names,
                           resolve_config_path)
from kuosan.errors import KuosanError

SECTIONS = {f.name: [g.name for g in dataclasses.fields(f.type if isinstance(f.type, type) else
                                                        type(getattr(Config(), f.name)))]
            for f in dataclasses.fields(Config)}


@pytest.mark.parametrize("name", preset_names())
def test_presets_load_and_round_trip(name):
    cfg = load_config(None, [], base=resolve_config_path(name))
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_overrides_apply_in_order_and_bare_names_mean_train():
    cfg = load_config(None, ["--steps", "5", "--train.steps=7", "--lr", "1e-4", "--bf16", "--model.base_channels", "8",
                             "--channel_mults", "1,2", "--min_snr_gamma", "none"])
    assert (cfg.train.steps, cfg.train.lr, cfg.train.bf16, cfg.model.base_channels) == (7, 1e-4, True, 8)
    assert cfg.model.channel_mults == (1, 2) and cfg.diffusion.min_snr_gamma is None
    assert load_config(None, ["--sample.steps", "4"]).sample.steps == 4
    assert load_config(None, ["--model", "dit", "--precond", "flow"]).model.kind == "dit"  # --model: the kind


BAD = [  # (overrides, words the message must contain)
    (["--stepz", "5"], "unknown option --stepz (did you mean --steps?)"),
    (["--model.base_chanels", "8"], "did you mean --model.base_channels?"),
    (["--steps", "-5"], "train.steps must be positive"),
    (["--steps", "0"], "train.steps must be positive"),
    (["--steps", "1.5"], "train.steps: expected a whole number"),
    (["--steps", "many"], "train.steps: expected a whole number, got 'many'"),
    (["--steps", "1e12"], "train.steps: expected a whole number"),
    (["--steps", "99999999999"], "train.steps 99999999999 is absurdly large"),
    (["--batch", "0"], "train.batch must be positive"),
    (["--batch", "10000000"], "train.batch 10000000 is absurdly large"),
    (["--resolution", "3"], "train.resolution must be between 4 and 1024"),
    (["--resolution", "100000"], "train.resolution must be between 4 and 1024"),
    (["--guidance", "-1"], "sample.guidance must be between 0 and 100"),
    (["--guidance", "1e6"], "sample.guidance must be between 0 and 100"),
    (["--guidance", "nan"], "sample.guidance: expected a finite number"),
    (["--guidance_rescale", "1.5"], "sample.guidance_rescale must be between 0 and 1"),
    (["--lr", "inf"], "train.lr: expected a finite number"),
    (["--lr", "1e400"], "train.lr: expected a finite number"),
    (["--lr", "5"], "train.lr 5.0 is absurdly large"),
    (["--lr", "0"], "train.lr must be positive"),
    (["--bf16", "maybe"], "train.bf16: expected true or false"),
    (["--channels", "2"], "train.channels must be 1 or 3"),
    (["--seed", "-1"], "train.seed must be a whole number from 0"),
    (["--betas", "0.9"], "train.betas must be two numbers in [0, 1)"),
    (["--betas", "0.9,1.5"], "train.betas must be two numbers in [0, 1)"),
    (["--ema_decay", "1"], "train.ema_decay must be in [0, 1)"),
    (["--lr_decay", "exp"], "train.lr_decay must be one of constant, cosine, linear, got 'exp'"),
    (["--max_nonfinite", "0"], "train.max_nonfinite must be positive"),
    (["--data", " "], "train.data is empty"),
    (["--channel_mults", "0,2"], "model.channel_mults must be whole numbers from 1 to 64"),
    (["--model.mlp_ratio", "0"], "model.mlp_ratio must be in (0, 64]"),
    (["--model.pos_embed", "rope"], "model.pos_embed must be one of learned, sincos, got 'rope'"),
    (["--channel_mults", "1.5,2"], "model.channel_mults must be whole numbers"),
    (["--channel_mults", "a,b"], "model.channel_mults: expected a whole number, got 'a'"),
    (["--model.base_channels", "100000"], "model.base_channels 100000 is absurdly large"),
    (["--model.kind", "transformer"], "model.kind must be one of"),
    (["--model.dropout", "1"], "model.dropout must be in [0, 1)"),
    (["--precond", "score"], f"diffusion.precond must be one of {', '.join(sorted(PRECONDS))}, got 'score'"),
    (["--sigma_min", "100"], "need 0 < diffusion.sigma_min < diffusion.sigma_max"),
    (["--timesteps", "1"], "diffusion.timesteps must be between 2 and 100000"),
    (["--sampler", "magic"], "sample.sampler must be one of"),
    (["--schedule", "magic"], "sample.schedule must be one of"),
    (["--sample.steps", "0"], "sample.steps must be positive"),
    (["--sample.steps", "100000"], "sample.steps 100000 is absurdly large"),
    (["steps", "5"], "expected an option like --key value, got 'steps'"),
    (["--repa_weight", "-1"], "train.repa_weight must be non-negative"),
    (["--repa_weight", "1000"], "train.repa_weight 1000.0 is absurdly large"),
    (["--repa_weight", "0.5", "--model.kind", "dit"], "train.repa_weight aligns a UNet's middle block"),
    (["--repa_weight", "0.5", "--lora_rank", "4"], "train.repa_weight trains a network from scratch"),
    (["--repa_weight", "0.5", "--compile"], "train.repa_weight runs without train.batch_per_device"),
    (["--repa_weight", "0.5", "--batch_per_device", "4"], "train.repa_weight runs without train.batch_per_device"),
]


@pytest.mark.parametrize("overrides,words", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_values_name_the_key(overrides, words):
    with pytest.raises(KuosanError) as e:
        load_config(None, overrides)
    assert words in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text,suffix,words", [
    ('{"train": {"steps": 5,}}', ".json", "cannot parse"),
    ("[1, 2, 3]", ".json", "must hold a mapping of sections"),
    ("- a\n- b\n", ".yaml", "must hold a mapping of sections"),
    ("train: [1, 2]\n", ".yaml", "config section 'train'"),
    ("train:\n  steps: [\n", ".yml", "cannot parse"),
    ("[train\nsteps = 5\n", ".toml", "cannot parse"),
    ('{"trian": {}}', ".json", "unknown config section 'trian' (did you mean 'train'?)"),
    ('{"train": {"stpes": 5}}', ".json", "unknown config key train.stpes (did you mean train.steps?)"),
    ('{"train": {"steps": "5"}, "model": {"channel_mults": {"a": 1}}}', ".json", "model.channel_mults"),
    ("steps = 5\n", ".ini", "must end in .json, .yaml, .yml or .toml"),
])
def test_bad_files_are_one_line_errors(tmp_path, text, suffix, words):
    path = tmp_path / f"config{suffix}"
    path.write_text(text)
    with pytest.raises(KuosanError, match=None) as e:
        load_config(path)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_binary_and_missing_files(tmp_path):
    (tmp_path / "c.json").write_bytes(b"\xff\xfe\x00garbage")
    for path, words in ((tmp_path / "c.json", "cannot read config file"), (tmp_path / "none.json", "not found"),
                        (tmp_path, "not found")):
        with pytest.raises(KuosanError, match=words):
            load_config(path)
    with pytest.raises(KuosanError, match="neither a file nor a preset"):
        resolve_config_path("no-such-preset")


def test_an_empty_yaml_section_means_defaults(tmp_path):
    (tmp_path / "c.yaml").write_text("model:\ntrain:\n  steps: 3\n")
    assert load_config(tmp_path / "c.yaml").train.steps == 3


# --- fuzzing: only KuosanError may escape ---------------------------------------------------------

_names = (st.sampled_from([n for names in SECTIONS.values() for n in names] + ["x", "", "Steps", "model"])
          | st.integers(0, 2) | st.none())
_scalars = (st.none() | st.booleans() | st.integers(-10 ** 30, 10 ** 30) | st.sampled_from([10 ** 400, -10 ** 400])
            | st.floats(allow_nan=True)
            | st.text(max_size=12) | st.sampled_from(["1e400", "nan", "-inf", "1,2", "(1, 2)", "none", "true",
                                                      "0x10", "1_000", "١٢", "3.0"]))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=5), inner, max_size=3), max_leaves=6)
_sections = st.dictionaries(_names, _values, max_size=5)
_keys = st.sampled_from(list(SECTIONS) + ["data", "", "Model"]) | st.integers(0, 3) | st.none()
_configs = st.dictionaries(_keys, _sections | _values, max_size=4)


def _only_kuosan_errors(fn, *args, **kwargs):
    try:
        cfg = fn(*args, **kwargs)
    except KuosanError as e:
        assert str(e) and "\n" not in str(e)
        return None
    assert isinstance(cfg, Config)
    assert config_from_dict(config_to_dict(cfg)) == cfg  # anything accepted survives a round trip
    return cfg


@settings(max_examples=300, deadline=None)
@given(_configs)
def test_fuzz_config_from_dict(data):
    _only_kuosan_errors(config_from_dict, data)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(list(SECTIONS)), _sections, max_size=4))
def test_fuzz_sections_with_known_names(data):
    _only_kuosan_errors(config_from_dict, data)


_option = st.sampled_from([f"--{s}.{n}" for s, names in SECTIONS.items() for n in names]
                          + [f"--{n}" for names in SECTIONS.values() for n in names] + ["--", "---x", "--a.b.c"])
_token = _option | st.text(max_size=10) | st.sampled_from(["-1", "0", "1e9", "nan", "1,2,3", "--5", "=", ""])


@settings(max_examples=300, deadline=None)
@given(st.lists(_token, max_size=8), st.dictionaries(st.text(max_size=10) | st.integers(), _scalars, max_size=3))
def test_fuzz_overrides(argv, mapping):
    _only_kuosan_errors(load_config, None, argv)
    _only_kuosan_errors(load_config, None, mapping)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_configs, suffix=st.sampled_from([".json", ".yaml", ".toml"]), raw=st.binary(max_size=40) | st.none())
def test_fuzz_config_files(tmp_path, data, suffix, raw):
    path = tmp_path / f"fuzz{suffix}"
    if raw is not None:
        path.write_bytes(raw)
    elif suffix == ".json":
        path.write_text(json.dumps(data, default=str))
    elif suffix == ".yaml":
        import yaml

        path.write_text(yaml.safe_dump(json.loads(json.dumps(data, default=str))))
    else:
        path.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in data.items() if isinstance(k, str)))
    _only_kuosan_errors(load_config, path)
