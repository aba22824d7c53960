import pytest

from adaptformer import AdapterConfig
from adaptformer.adapters.config import parse_method_spec


def test_defaults_are_the_papers_main_setting():
    cfg = AdapterConfig()
    assert (cfg.method, cfg.bottleneck, cfg.scale, cfg.dropout) == ("adaptformer", 64, 0.1, 0.1)
    assert (cfg.layernorm, cfg.position, cfg.layers) == ("none", "parallel", None)


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
    ],
)
def test_method_specs(spec, expected):
    assert parse_method_spec(spec) == expected


@pytest.mark.parametrize("spec", ["full-3", "adaptformer-0", "prefix", "AdaptFormer"])
def test_bad_method_specs_are_refused(spec):
    with pytest.raises(ValueError, match="method"):
        parse_method_spec(spec)
