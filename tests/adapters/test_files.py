"""Adapter-only files: bit-identical round trip, any name, loud failure on the wrong backbone."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import adaptformer as af

from ..helpers import randomize_, tiny_vit

X = torch.randn(2, 3, 32, 32)


def _trained(method="adaptformer", **cfg):
    torch.manual_seed(0)
    model = tiny_vit(layer_scale=True)
    backbone = {k: v.clone() for k, v in model.state_dict().items()}
    af.inject(
        model, af.AdapterConfig(method=method, bottleneck=4, **cfg), name="cifar", num_classes=5
    )
    for n, p in model.named_parameters():
        if any(s in n for s in ("adaptmlp", "attn_adapter", "prompts", "lora_", "head.")):
            randomize_(torch.nn.ParameterList([p]))
    model.eval()
    return model, backbone


def _fresh(backbone, **kwargs):
    model = tiny_vit(layer_scale=True, **kwargs)
    model.load_state_dict(backbone)
    return model


@pytest.mark.parametrize(
    ("method", "cfg"),
    [
        ("adaptformer", {}),
        ("adaptformer", {"scale": "learnable", "layernorm": "in", "layers": [1, 3]}),
        ("adapter_plus", {}),
        ("houlsby", {"layers": [0, 2]}),
        ("pfeiffer", {"scale": "channel", "layernorm": "out"}),
        ("vpt", {"prompt_tokens": 2}),
        ("lora", {}),
        ("linear", {"head_batchnorm": True}),
        ("bitfit", {}),
    ],
)
def test_round_trip_is_bit_identical_under_another_name(tmp_path, method, cfg):
    model, backbone = _trained(method, **cfg)
    if method == "bitfit":  # bitfit changes backbone biases: they must travel in the file
        with torch.no_grad():
            model.blocks[0].attn.qkv.bias.add_(0.5)
    expected = model(X)
    af.save_adapter(model, tmp_path / "a", metadata={"classes": list("abcde")})
    fresh = _fresh(backbone)
    af.load_adapter(fresh, tmp_path / "a", name="anything")
    fresh.eval()
    assert torch.equal(fresh(X), expected)
    info = af.read_adapter_config(tmp_path / "a")
    assert info["metadata"]["classes"] == list("abcde") and info["num_classes"] == 5
    assert not any(".cifar." in k for k in load_file(tmp_path / "a" / "adapter_model.safetensors"))


def test_file_holds_only_adapter_and_head(tmp_path):
    model, _ = _trained()
    af.save_adapter(model, tmp_path)
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert keys == {
        f"blocks.{i}.adaptmlp.{p}"
        for i in range(4)
        for p in ("down_proj.weight", "down_proj.bias", "up_proj.weight", "up_proj.bias")
    } | {"head.weight", "head.bias"}
    assert json.loads((tmp_path / "adapter_config.json").read_text())["config"]["bottleneck"] == 4


def test_wrong_width_lists_shapes_and_leaves_model_untouched(tmp_path):
    model, _ = _trained()
    af.save_adapter(model, tmp_path)
    other = tiny_vit(layer_scale=True, embed_dim=64)
    before = other(X)
    with pytest.raises(
        ValueError,
        match=r"shape mismatch: blocks\.0\.adaptmlp\.down_proj\.weight \(file \(4, 48\) vs model \(4, 64\)\)",
    ):
        af.load_adapter(other, tmp_path)
    assert not hasattr(other, "adaptformer") and torch.equal(other(X), before)


def test_wrong_depth_lists_keys(tmp_path):
    model, _ = _trained()
    af.save_adapter(model, tmp_path)
    other = tiny_vit(layer_scale=True, depth=2)
    with pytest.raises(
        ValueError, match="block 2, but the backbone has 2 blocks|not in model: blocks.2"
    ):
        af.load_adapter(other, tmp_path)


def test_loading_into_a_model_with_other_tasks_keeps_them(tmp_path):
    model, backbone = _trained()
    af.save_adapter(model, tmp_path)
    fresh = _fresh(backbone)
    af.inject(fresh, af.AdapterConfig(bottleneck=4), name="other", num_classes=3)
    af.load_adapter(fresh, tmp_path, name="cifar")
    assert sorted(fresh.adaptformer.configs) == ["cifar", "other"]
    af.set_adapter(fresh, "other")
    assert fresh(X).shape == (2, 3)


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        af.load_adapter(tiny_vit(), tmp_path / "nope")


def test_adapter_file_is_about_one_percent_for_vit_b(tmp_path):
    import timm

    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=100)
    af.inject(model, af.AdapterConfig(bottleneck=64))
    af.save_adapter(model, tmp_path)
    size = (tmp_path / "adapter_model.safetensors").stat().st_size
    full = sum(p.numel() * 4 for p in model.parameters())
    assert size < 0.02 * full


# -- untrusted files: damaged, inconsistent or hostile adapters ------------------------------


def _saved(tmp_path, method="adaptformer", **cfg):
    model, backbone = _trained(method, **cfg)
    af.save_adapter(model, tmp_path / "a")
    return tmp_path / "a", backbone


def _edit_config(directory, edit) -> None:
    path = directory / "adapter_config.json"
    info = json.loads(path.read_text())
    path.write_text(json.dumps(edit(info)))


def _refused(directory, backbone, match):
    """load_adapter raises a one-line ValueError matching ``match`` and changes nothing."""
    fresh = _fresh(backbone)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match=match) as err:
        af.load_adapter(fresh, directory)
    assert "\n" not in str(err.value)
    assert not hasattr(fresh, "adaptformer")
    after = fresh.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda info: [info], "not an adaptformer adapter file"),
        (lambda info: {**info, "config": []}, "config must be a mapping"),
        (lambda info: {**info, "num_classes": "2"}, "num_classes must be a whole number"),
        (lambda info: {**info, "num_classes": True}, "num_classes must be a whole number"),
        (lambda info: {**info, "metadata": 3}, "metadata must be a mapping"),
        (lambda info: {k: v for k, v in info.items() if k != "config"}, "config must be"),
        (lambda info: {**info, "config": {**info["config"], "scale": float("nan")}}, "scale=nan"),
        (lambda info: {**info, "config": {**info["config"], "bottleneck": "4"}}, "bottleneck="),
        (lambda info: {**info, "config": {**info["config"], "layers": 3}}, "layers=3"),
    ],
)
def test_bad_config_types_are_one_line_errors(tmp_path, edit, match):
    directory, backbone = _saved(tmp_path)
    _edit_config(directory, edit)
    _refused(directory, backbone, match)


def test_config_that_is_not_json_is_a_one_line_error(tmp_path):
    directory, backbone = _saved(tmp_path)
    (directory / "adapter_config.json").write_text("{not json")
    _refused(directory, backbone, "is not valid JSON")


@pytest.mark.parametrize(
    ("method", "cfg", "field", "match"),
    [
        ("adaptformer", {}, "bottleneck", "bottleneck=1000000000 but the file has blocks"),
        ("lora", {}, "bottleneck", "bottleneck=1000000000 but the file has blocks"),
        ("houlsby", {}, "bottleneck", "bottleneck=1000000000 but the file has blocks"),
        ("vpt", {"prompt_tokens": 2}, "prompt_tokens", "prompt_tokens=1000000000 but the file"),
        ("adaptformer", {}, "num_classes", "num_classes=1000000000 but the file has head.weight"),
    ],
)
def test_huge_sizes_are_refused_before_allocating(tmp_path, monkeypatch, method, cfg, field, match):
    """A config asking for 10**9 classes or bottleneck units never reaches inject()."""
    directory, backbone = _saved(tmp_path, method, **cfg)
    if field == "num_classes":
        _edit_config(directory, lambda info: {**info, "num_classes": 10**9})
    else:
        _edit_config(directory, lambda info: {**info, "config": {**info["config"], field: 10**9}})

    def no_inject(*args, **kwargs):
        raise AssertionError("inject() called with sizes the file does not back")

    monkeypatch.setattr("adaptformer.adapters.files.inject", no_inject)
    _refused(directory, backbone, match)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda b: b"", "too short for a header"),
        (lambda b: b[: len(b) // 2], "not a valid safetensors file"),
        (lambda b: b"\x13garbage" * 40, "not a valid safetensors file"),
    ],
)
def test_truncated_empty_or_garbage_weights_are_one_line_errors(tmp_path, damage, match):
    directory, backbone = _saved(tmp_path)
    weights = directory / "adapter_model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    _refused(directory, backbone, match)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda t: t.fill_(float("nan")), "NaN or infinite values in blocks.0.adaptmlp.up_proj"),
        (lambda t: t.fill_(float("inf")), "NaN or infinite values in blocks.0.adaptmlp.up_proj"),
        (lambda t: t.long(), r"blocks.0.adaptmlp.up_proj.weight \(file torch.int64"),
        (lambda t: t.bool(), "not floating point: blocks.0.adaptmlp.up_proj.weight"),
    ],
)
def test_numbers_that_are_not_numbers_are_refused_by_name(tmp_path, change, match):
    from safetensors.torch import save_file

    directory, backbone = _saved(tmp_path)
    weights = directory / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = "blocks.0.adaptmlp.up_proj.weight"
    tensors[key] = change(tensors[key].clone())
    save_file(tensors, str(weights))
    _refused(directory, backbone, match)


def test_head_batchnorm_counter_stays_an_integer_tensor(tmp_path):
    """The one integer tensor a file may hold (BatchNorm's counter) still loads."""
    directory, backbone = _saved(tmp_path, "linear", head_batchnorm=True)
    af.load_adapter(_fresh(backbone), directory)


# -- issue #24 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["weights", "scale", "lora_alpha"])
def test_overflowing_magnitudes_are_refused_at_load(tmp_path, where):
    """Finite weights of 1e38 (or a scale of 1e38) turned every answer into inf (item 15)."""
    from safetensors.torch import save_file

    method = "lora" if where == "lora_alpha" else "adaptformer"
    directory, backbone = _saved(tmp_path, method)
    if where == "weights":
        path = directory / "adapter_model.safetensors"
        tensors = load_file(path)
        key = next(k for k in tensors if "up_proj.weight" in k)
        tensors[key] = tensors[key] * 1e38
        save_file(tensors, str(path), {"format": "adaptformer-adapter/1"})
    else:
        _edit_config(directory, lambda i: {**i, "config": {**i["config"], where: 1e38}})
    _refused(directory, backbone, "above 10000 in magnitude")


def test_real_magnitudes_stay_far_below_the_bound(tmp_path):
    from adaptformer.adapters.files import MAX_ABS_WEIGHT

    model, _ = _trained()
    largest = max(p.abs().max().item() for p in af.adapter_parameters(model, "cifar").values())
    assert largest * 1000 < MAX_ABS_WEIGHT


@pytest.mark.parametrize(
    "other",
    [{"scale": 5.0}, {"position": "sequential"}, {"activation": "gelu"}, {"method": "lora"}],
)
def test_loading_into_an_existing_name_never_keeps_the_old_config(tmp_path, other):
    """load_adapter copied the tensors into an existing task and kept its config (item 19)."""
    model, backbone = _trained()
    af.save_adapter(model, tmp_path / "a")
    method = other.get("method", "adaptformer")
    cfg = {k: v for k, v in other.items() if k != "method"}
    fresh = _fresh(backbone)
    af.inject(fresh, af.AdapterConfig(method=method, bottleneck=4, **cfg), "cifar", num_classes=5)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    try:
        af.load_adapter(fresh, tmp_path / "a", name="cifar")
    except ValueError as e:  # refused: the model is as it was
        assert "exists with another config" in str(e) and "\n" not in str(e)
        after = fresh.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)
        return
    with torch.no_grad():  # replaced: it answers as the saved task does
        torch.testing.assert_close(fresh(X), model(X))


def test_loading_the_same_config_into_an_existing_name_copies_the_weights(tmp_path):
    model, backbone = _trained()
    af.save_adapter(model, tmp_path / "a")
    fresh = _fresh(backbone)
    af.inject(fresh, af.AdapterConfig(bottleneck=4), "cifar", num_classes=5)
    af.load_adapter(fresh, tmp_path / "a", name="cifar")
    with torch.no_grad():
        torch.testing.assert_close(fresh(X), model(X))


@pytest.mark.parametrize("method", ["full", "bitfit"])
def test_a_backbone_changing_task_is_not_loaded_beside_other_tasks(tmp_path, method):
    """Its backbone tensors would be copied over the backbone the other tasks share (item 4)."""
    model, backbone = _trained(method)
    with torch.no_grad():
        model.blocks[0].attn.qkv.bias.add_(0.5)
    af.save_adapter(model, tmp_path / "a")
    fresh = _fresh(backbone)
    af.inject(fresh, af.AdapterConfig(bottleneck=4), name="other", num_classes=3)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match="changes the backbone") as err:
        af.load_adapter(fresh, tmp_path / "a", name="cifar")
    assert "\n" not in str(err.value) and "other" in str(err.value)
    after = fresh.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
