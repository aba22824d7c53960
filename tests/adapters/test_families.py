"""The family seam itself: a spec declared by a user (docs/families.md's example, run as
written), refusals, and that a spec's branches are all that is needed for every method."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch

import adaptformer as af
from adaptformer.adapters.families import FAMILIES, family_of, unregister_family

from ..helpers import randomize_, tiny_vit

DOC = Path(__file__).resolve().parents[2] / "docs" / "families.md"


@pytest.fixture
def res_post_family(capsys):
    """docs/families.md's example, executed as written; the spec is removed afterwards."""
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    scope: dict = {"torch": torch}
    try:
        exec(compile(code, str(DOC), "exec"), scope)
        scope["printed"] = capsys.readouterr().out
        yield scope
    finally:
        unregister_family("vit-res-post")


def test_the_docs_example_adapts_a_block_class_without_a_built_in_spec(res_post_family):
    assert res_post_family["printed"].strip() == "torch.Size([2, 37])"
    model = res_post_family["model"]
    assert family_of(model).name == "vit-res-post"
    counts = af.count_parameters(model)
    adapters = sum(p.numel() for p in af.adapter_parameters(model, "pets").values())
    assert counts.trainable == adapters + 384 * 37 + 37


def _res_post_block_by_hand(block, x, adapter):
    """timm's ResPostBlock written out, with AdaptFormer's parallel adapter beside its MLP."""
    x = x + block.norm1(block.attn(x))
    a = adapter.up_proj(torch.relu(adapter.down_proj(x))) * adapter.scale
    return x + block.norm2(block.mlp(x)) + a


def test_a_declared_spec_gets_the_adapter_rules_right(res_post_family):
    model = res_post_family["model"].eval()
    block = model.blocks[0]
    randomize_(block.adaptmlp["pets"])
    x = torch.randn(2, 17, 384)
    with torch.no_grad():
        expected = _res_post_block_by_hand(block, x, block.adaptmlp["pets"])
        assert torch.allclose(block(x), expected, atol=1e-5)


def test_a_declared_spec_runs_every_method_and_round_trips_task_files(res_post_family, tmp_path):
    import timm
    from timm.models.vision_transformer import ResPostBlock

    x = torch.randn(2, 3, 64, 64)
    backbone = timm.create_model(
        "vit_small_patch16_224", block_fn=ResPostBlock, img_size=64, depth=2, num_classes=0
    ).eval()
    with torch.no_grad():
        bare = backbone.forward_features(x)
    for method in ("adaptformer", "lora", "vpt", "bitfit", "linear"):
        model = copy.deepcopy(backbone)
        af.inject(model, af.AdapterConfig(method=method, bottleneck=4), name="t", num_classes=3)
        if method in ("adaptformer", "lora"):  # zero-initialised: the backbone is unchanged
            with torch.no_grad():
                assert torch.allclose(model.forward_features(x), bare, atol=1e-6)
        with torch.no_grad():
            for p in af.trainable_parameters(model, method):
                p.normal_(0.0, 0.05)
        model.eval()
        with torch.no_grad():
            before = model(x)
        af.save_adapter(model, tmp_path / method, "t")
        other = copy.deepcopy(backbone)  # the task file alone carries the task
        af.load_adapter(other, tmp_path / method, name="again")
        with torch.no_grad():
            assert torch.allclose(other.eval()(x), before, atol=1e-6), method


def test_registering_a_second_family_of_the_same_name_is_refused(res_post_family):
    with pytest.raises(ValueError, match="registered already"):
        af.adapters.families.register_family(FAMILIES[0])


def test_refusals_name_the_block_and_the_reason():
    from timm.models.vision_transformer import ResPostBlock

    with pytest.raises(TypeError, match="ResPostBlock.*supported families.*docs/families.md"):
        af.inject(tiny_vit(block_fn=ResPostBlock))

    class Hiera(torch.nn.Module):  # the name is what the refusal table is keyed on
        pass

    with pytest.raises(TypeError, match="Hiera pools tokens"):
        af.inject(Hiera())


def test_a_distilled_deit_is_refused_before_anything_changes():
    """Its blocks are the vit family's, but its output averages a second head that a task head
    does not replace (it used to fail at the first forward with a shape error)."""
    from timm.models.deit import VisionTransformerDistilled

    model = VisionTransformerDistilled(img_size=32, patch_size=16, embed_dim=32, depth=2,
                                       num_heads=2, num_classes=0)  # fmt: skip
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TypeError, match="head_dist.*deit_small_patch16_224"):
        af.inject(model, af.AdapterConfig(bottleneck=4), name="t", num_classes=5)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def test_a_subclass_that_overrides_forward_is_refused():
    from timm.models.vision_transformer import Block

    class Custom(Block):
        def forward(self, x, **kwargs):
            return super().forward(x, **kwargs) * 2

    model = tiny_vit(block_fn=Custom)
    with pytest.raises(TypeError, match="Custom"):
        af.inject(model)


def test_an_adapted_model_pickles_and_copies_with_its_registered_spec():
    """A spec holds functions; it travels by name, so pickled and copied models point to the
    one registered spec (what ``accepts`` and the adapted block classes compare against)."""
    import pickle

    model = tiny_vit()
    af.inject(model, af.AdapterConfig(bottleneck=4), name="a", num_classes=3)
    randomize_(model.blocks[0].adaptmlp["a"])
    x = torch.randn(2, 3, 32, 32)
    for other in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert other.adaptformer.family is model.adaptformer.family
        assert type(other.blocks[0]) is type(model.blocks[0])
        assert torch.equal(other.eval()(x), model.eval()(x))
        af.inject(other, af.AdapterConfig(method="lora", bottleneck=2), name="b")  # still usable
