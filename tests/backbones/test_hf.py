"""``backbones.hf``: a Hugging Face encoder behind timm's backbone interface, and loading a
``save_pretrained`` folder without running code from it, every key checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from timm.layers import resample_abs_pos_embed

import adaptformer as af
from adaptformer.backbones.create import pretrained_backbone
from adaptformer.backbones.hf import HFVisionBackbone, load_hf_backbone, save_timm_as_hf
from adaptformer.data.preprocess import model_stats
from adaptformer.utils.errors import UserFacingError

from ..helpers import TINY_HF_VIT, tiny_hf, tiny_vit

transformers = pytest.importorskip("transformers", reason="transformers not installed ('.[hf]')")

X = torch.randn(2, 3, 32, 32)
KINDS = ["vit", "dinov2", "registers"]


@pytest.mark.parametrize("kind", KINDS)
def test_features_and_pooling_are_the_hf_models_own(kind):
    hf = tiny_hf(kind)
    model = HFVisionBackbone(hf, num_classes=5).eval()
    with torch.no_grad():
        out = hf(pixel_values=X)
        torch.testing.assert_close(model.forward_features(X), out.last_hidden_state)
        pooled = model.forward_head(model.forward_features(X), pre_logits=True)
        torch.testing.assert_close(pooled, out.last_hidden_state[:, 0])
        torch.testing.assert_close(model(X), model.head(pooled))
    assert model.num_prefix_tokens == (3 if kind == "registers" else 1)
    assert model.num_features == model.embed_dim == 48 and model.get_classifier() is model.head
    assert model.patch_embed.patch_size == (8, 8) and model.patch_embed.grid_size == (4, 4)
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)
    model.reset_classifier(3)
    assert model(X).shape == (2, 3)
    model.reset_classifier(0)
    assert model(X).shape == (2, 48)


def test_backbone_keys_are_the_hf_keys():
    hf = tiny_hf("dinov2")
    keys = set(HFVisionBackbone(hf).state_dict())
    assert keys == set(hf.state_dict())
    assert "encoder.layer.1.attention.attention.query.weight" in keys


@pytest.mark.parametrize("kind", ["vit", "dinov2"])
def test_position_grid_is_resampled_once_like_the_timm_path(kind):
    hf = tiny_hf(kind)
    pos = hf.embeddings.position_embeddings.detach().clone()
    model = HFVisionBackbone(hf, img_size=64).eval()
    expected = resample_abs_pos_embed(pos, new_size=[8, 8], num_prefix_tokens=1, antialias=False)
    torch.testing.assert_close(model.embeddings.position_embeddings, expected, atol=0, rtol=0)
    x = torch.randn(1, 3, 64, 64)
    emb = model.embeddings
    # HF's runtime interpolation is a no-op at the resampled grid (eager and traced alike)
    tokens = torch.zeros(1, 1 + 64, 48)
    assert emb.interpolate_pos_encoding(tokens, 64, 64) is emb.position_embeddings
    assert model(x).shape == (1, 48) and model.patch_embed.img_size == (64, 64)


def test_an_image_size_between_patches_is_refused():
    with pytest.raises(ValueError, match=r"--img-size 36 is not a multiple .* use 32 or 40"):
        HFVisionBackbone(tiny_hf("vit"), img_size=36)


def test_vit_classifier_is_kept_when_it_fits():
    hf = transformers.ViTForImageClassification(transformers.ViTConfig(**TINY_HF_VIT, num_labels=4))
    hf.eval()
    model = HFVisionBackbone(hf, num_classes=4).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(X), hf(pixel_values=X).logits)
    other = HFVisionBackbone(hf, num_classes=3)  # another task: a fresh head
    assert other.head is not hf.classifier and other.head.out_features == 3


def test_gradient_checkpointing_gives_the_same_gradients():
    model = HFVisionBackbone(tiny_hf("dinov2"), num_classes=3).train()
    af.inject(model, af.AdapterConfig(bottleneck=4, dropout=0.0))
    af.mark_trainable(model, "adaptformer")
    grads = []
    for on in (False, True):
        model.set_grad_checkpointing(on)
        model.zero_grad()
        model(X).square().sum().backward()
        grads.append(
            torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        )
    assert grads[0].numel() == grads[1].numel() > 0
    torch.testing.assert_close(grads[1], grads[0])


# -- loading a save_pretrained folder ---------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    hf = tiny_hf("dinov2")
    hf.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


@pytest.mark.parametrize("kind", KINDS)
def test_a_save_pretrained_folder_loads_to_the_same_model(kind, tmp_path):
    hf = tiny_hf(kind)
    hf.save_pretrained(tmp_path)
    model = pretrained_backbone(f"hf:{tmp_path}", None, 32).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(X), hf(pixel_values=X).last_hidden_state)
    at_48 = load_hf_backbone(tmp_path, img_size=48)
    assert at_48.embeddings.position_embeddings.shape == (1, 37, 48)


def test_classification_models_load_their_encoder(tmp_path):
    cfg = transformers.Dinov2Config(**{**TINY_HF_VIT, "num_labels": 3})
    hf = transformers.Dinov2ForImageClassification(cfg).eval()
    hf.save_pretrained(tmp_path)
    model = load_hf_backbone(tmp_path, num_classes=3).eval()
    with torch.no_grad():  # the encoder's weights; its classifier reads class + mean tokens
        expected = hf.dinov2(pixel_values=X).last_hidden_state
        torch.testing.assert_close(model.forward_features(X), expected)


def test_sharded_and_bin_weights_load(tmp_path):
    hf = tiny_hf("vit")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((tmp_path / "sharded" / "config.json").read_text())
    with torch.no_grad():
        expected = hf(pixel_values=X).last_hidden_state
        for where in (tmp_path / "sharded", tmp_path):
            got = load_hf_backbone(where).eval().forward_features(X)
            torch.testing.assert_close(got, expected)


def test_preprocessing_comes_from_the_processor_config(folder):
    assert load_hf_backbone(folder).pretrained_cfg["mean"] == (0.485, 0.456, 0.406)
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.2, 0.2], "resample": 2})
    )
    cfg = load_hf_backbone(folder).pretrained_cfg
    assert (cfg["mean"], cfg["std"], cfg["interpolation"]) == (
        (0.5, 0.4, 0.3),
        (0.2, 0.2, 0.2),
        "bilinear",
    )
    assert model_stats(load_hf_backbone(folder))["interpolation"] == "bilinear"


def _edit_weights(folder: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    sd = load_file(str(folder / "model.safetensors"))
    change(sd)
    save_file(sd, str(folder / "model.safetensors"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda sd: sd.pop("encoder.layer.1.norm2.bias"), r"missing.*encoder\.layer\.1\.norm2\.bias"),
        (lambda sd: sd.update(extra=torch.zeros(1)), r"unexpected: extra"),
        (lambda sd: sd.update({"layernorm.weight": torch.ones(7)}), r"wrong shape: layernorm\.weight \(checkpoint \(7,\)"),
    ],
)  # fmt: skip
def test_weights_that_do_not_fit_the_config_are_refused(folder, change, message):
    _edit_weights(folder, change)
    with pytest.raises(ValueError, match=message):
        load_hf_backbone(folder)


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_type": "videomae"}, r"model_type 'videomae' is not one adaptformer wraps"),
        ({"model_type": "bert"}, r"model_type 'bert' is not one adaptformer wraps"),
        ({"hidden_size": 10**9}, r"impossible sizes: hidden_size=1000000000"),
        ({"num_hidden_layers": -1}, r"impossible sizes: num_hidden_layers=-1"),
    ],
)
def test_configs_adaptformer_cannot_build_are_refused(folder, changes, message):
    _edit_config(folder, **changes)
    with pytest.raises(ValueError, match=message):
        load_hf_backbone(folder)


def test_remote_code_is_never_imported(folder):
    """``auto_map`` points at code in the folder; it must never run (no trust_remote_code)."""
    marker = folder / "ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    _edit_config(folder, auto_map={"AutoModel": "evil.EvilModel", "AutoConfig": "evil.C"})
    load_hf_backbone(folder)
    assert not marker.exists()


def test_pickled_objects_in_bin_weights_are_refused(tmp_path):
    hf = tiny_hf("vit")
    hf.config.save_pretrained(tmp_path)
    torch.save({"weights": hf.state_dict(), "obj": Path("x")}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"cannot read checkpoint"):
        load_hf_backbone(tmp_path)


def test_missing_folder_or_weights_and_checkpoint_flag(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match=r"holds no config\.json"):
        load_hf_backbone(tmp_path / "nowhere")
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors or pytorch_model\.bin"):
        load_hf_backbone(folder)
    with pytest.raises(ValueError, match=r"reads its weights from its folder: drop --checkpoint"):
        pretrained_backbone(f"hf:{folder}", "x.safetensors", 32)


def test_raw_hf_models_are_refused_with_the_wrapper_named():
    for model in (tiny_hf("vit"), tiny_hf("dinov2")):
        with pytest.raises(TypeError, match=r"cannot adapt \w+: wrap it first .*HFVisionBackbone"):
            af.inject(model, af.AdapterConfig())
    cfg = transformers.VideoMAEConfig(**TINY_HF_VIT, num_frames=2, tubelet_size=2)
    with pytest.raises(TypeError, match=r"cannot adapt VideoMAEModel: .*videomae_"):
        af.inject(transformers.VideoMAEModel(cfg), af.AdapterConfig())
    with pytest.raises(TypeError, match=r"wraps transformers' .* not VideoMAEModel"):
        HFVisionBackbone(transformers.VideoMAEModel(cfg))


def test_the_library_imports_and_refuses_cleanly_without_transformers(folder):
    """``import adaptformer`` never imports transformers; without it, hf: is one line."""
    code = f"""
import sys
import adaptformer
assert "transformers" not in sys.modules, "import adaptformer imported transformers"
sys.modules["transformers"] = None  # as if not installed
from adaptformer.backbones.create import pretrained_backbone
from adaptformer.utils.errors import UserFacingError
try:
    pretrained_backbone("hf:{folder}", None, 32)
except UserFacingError as e:
    print(e)
"""
    env_path = str(Path(af.__file__).parents[1])
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        "Hugging Face backbones need transformers: pip install 'adaptformer[hf]'"
    )
    assert issubclass(UserFacingError, RuntimeError)


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ([], r"has no weight_map of file names"),
        ({"weight_map": {"a": "../../elsewhere.safetensors"}}, r"names a shard outside its folder"),
    ],
)
def test_a_damaged_shard_index_is_refused(folder, index, message):
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=message):
        load_hf_backbone(folder)


@pytest.mark.parametrize(
    ("kwargs", "model_type", "message"),
    [
        ({"reg_tokens": 2}, "dinov2", r"register tokens / no_embed_class are not converted"),
        ({"qk_norm": True}, "dinov2", r"no extra norms"),
        ({"layer_scale": True}, "vit", r"HF ViTModel has no LayerScale"),
        ({}, "swin", r"model_type must be vit or dinov2"),
    ],
)
def test_timm_models_without_an_hf_twin_are_refused(kwargs, model_type, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        save_timm_as_hf(tiny_vit(depth=1, **kwargs), tmp_path, model_type)
    assert not any(tmp_path.iterdir())
