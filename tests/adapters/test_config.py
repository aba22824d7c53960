import pytest

from adaptformer import AdapterConfig
from adaptformer.adapters.config import parse_method_spec


def test_defaults_are_the_papers_main_setting():
    cfg = AdapterConfig()
    assert (cfg.method, cfg.bottleneck, cfg.scale, cfg.dropout) == ("adaptformer", 64, 0.1, 0.1)
    assert (cfg.layernorm, cfg.position, cfg.layers) == ("none", "parallel", None)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("adaptformer", (64, "parallel", 0.1, "lora", "relu", 0.1, 0.0)),
        ("adapter_plus", (8, "post", "channel", "houlsby", "gelu", 0.0, 0.1)),
        ("houlsby", (8, "houlsby", 1.0, "houlsby", "gelu", 0.0, 0.0)),
        ("pfeiffer", (48, "post", 1.0, "bert", "relu", 0.0, 0.0)),
        ("lora", (64, "parallel", 0.1, "lora", "relu", 0.1, 0.0)),  # rank 64 as before
    ],
)
def test_a_method_fills_in_its_preset(method, expected):
    cfg = AdapterConfig(method=method)
    names = ("bottleneck", "position", "scale", "init", "activation", "dropout", "drop_path")
    assert tuple(getattr(cfg, n) for n in names) == expected


def test_explicit_knobs_win_over_the_preset():
    cfg = AdapterConfig(method="adapter_plus", bottleneck=32, scale=0.5, drop_path=0.0)
    assert (cfg.bottleneck, cfg.scale, cfg.drop_path, cfg.position) == (32, 0.5, 0.0, "post")


def test_a_task_file_written_before_the_family_reads_back_as_adaptformer():
    """Old adapter_config.json files have no init/activation/drop_path: AdaptFormer's apply."""
    old = {"method": "adaptformer", "bottleneck": 16, "scale": 0.1, "dropout": 0.1,
           "layernorm": "none", "position": "sequential", "layers": None, "prompt_tokens": 1,
           "prompt_mode": "deep", "lora_alpha": 16.0, "head_batchnorm": False}  # fmt: skip
    cfg = AdapterConfig.from_dict(old)
    assert (cfg.init, cfg.activation, cfg.drop_path) == ("lora", "relu", 0.0)
    assert cfg.position == "sequential" and cfg.bottleneck == 16


def test_json_round_trip(tmp_path):
    cfg = AdapterConfig(bottleneck=8, scale="learnable", layers=[0, -1], position="sequential")
    path = tmp_path / "c.json"
    cfg.to_json(path)
    assert AdapterConfig.from_json(path) == cfg
    assert AdapterConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "prefix"}, "method='prefix' is unknown"),
        ({"bottleneck": 0}, "bottleneck=0"),
        ({"scale": "big"}, "scale='big'"),
        ({"dropout": 1.5}, "dropout=1.5"),
        ({"layernorm": "pre"}, "layernorm='pre'"),
        ({"position": "before"}, "position='before'"),
        ({"init": "xavier"}, "init='xavier'"),
        ({"activation": "tanh"}, "activation='tanh'"),
        ({"drop_path": 1.0}, "drop_path=1.0"),
        ({"scale": "channels"}, "scale='channels'"),
        ({"layers": []}, "layers=[]"),
        ({"layers": [1, 1]}, "lists a block twice"),
        ({"prompt_tokens": 0}, "prompt_tokens=0"),
    ],
)
def test_bad_values_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        AdapterConfig(**kwargs)


def test_unknown_json_field_is_an_error():
    with pytest.raises(ValueError, match="unknown AdapterConfig field"):
        AdapterConfig.from_dict({"bottlenek": 8})


def test_resolve_layers():
    assert AdapterConfig().resolve_layers(3) == [0, 1, 2]
    assert AdapterConfig(layers=[-1, 0]).resolve_layers(12) == [0, 11]
    with pytest.raises(ValueError, match="has 12 blocks"):
        AdapterConfig(layers=[12]).resolve_layers(12)
    with pytest.raises(ValueError, match="same block twice"):
        AdapterConfig(layers=[0, -12]).resolve_layers(12)


def test_every_field_has_help():
    assert all(AdapterConfig.field_help().values())


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("linear", {"method": "linear"}),
        ("adaptformer-8", {"method": "adaptformer", "bottleneck": 8}),
        ("lora-16", {"method": "lora", "bottleneck": 16}),
        ("vpt-10", {"method": "vpt", "prompt_tokens": 10}),
        ("adapter_plus-16", {"method": "adapter_plus", "bottleneck": 16}),
    ],
)
def test_method_specs(spec, expected):
    assert parse_method_spec(spec) == expected


@pytest.mark.parametrize("spec", ["full-3", "adaptformer-0", "prefix", "AdaptFormer"])
def test_bad_method_specs_are_refused(spec):
    with pytest.raises(ValueError, match="method"):
        parse_method_spec(spec)
