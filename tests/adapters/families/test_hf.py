"""The Hugging Face ViT / DINOv2 specs: identity at init, the layers' formula written out by hand
with the adapters, the same weights through timm and HF (tiny models, and the shared DINOv2
ViT-S/14), task files across implementations, mixed-task batches, export."""

from __future__ import annotations

import copy
import random

import pytest
import torch
import torch.nn.functional as F

import adaptformer as af
from adaptformer.adapters.config import method_rule
from adaptformer.adapters.inject import AdaptedBlock
from adaptformer.backbones.create import pretrained_backbone
from adaptformer.backbones.hf import HFVisionBackbone, load_hf_backbone, save_timm_as_hf

from ...helpers import randomize_, tiny_hf, tiny_vit

pytest.importorskip("transformers", reason="transformers not installed (pip install '.[hf]')")


KINDS = ["vit", "dinov2", "registers"]
X = torch.randn(3, 3, 32, 32)


def wrapped(kind: str, num_classes: int = 0) -> HFVisionBackbone:
    return HFVisionBackbone(tiny_hf(kind), num_classes=num_classes).eval()


def config(method: str, **over) -> af.AdapterConfig:
    """``method`` with small sizes and no adapter dropout (so train mode is deterministic)."""
    rule = method_rule(method)
    sized = {"bottleneck": 8} if rule.bottleneck_adapter or method == "lora" else {}
    if rule.bottleneck_adapter:
        sized["dropout"] = 0.0
    return af.AdapterConfig(method=method, **{**sized, **over})


def randomize_adapter(model, name: str = "default", std: float = 0.2) -> None:
    with torch.no_grad():
        for p in af.adapter_parameters(model, name).values():
            p.normal_(0.0, std)


# -- identity at init --------------------------------------------------------------------------

METHODS = ["adaptformer", "adapter_plus", "houlsby", "pfeiffer", "lora", "bitfit", "linear", "full"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("train", [False, True])
def test_identity_at_init_with_zero_up_projections(kind, method, train):
    model = wrapped(kind).train(train)
    with torch.no_grad():
        before = model.forward_features(X)
    af.inject(model, config(method), num_classes=4)
    model.train(train)
    blocks = list(model.encoder.layer)
    assert all(isinstance(b, AdaptedBlock) for b in blocks)
    with torch.no_grad():  # presets start near zero (Houlsby/BERT inits): zero their up_proj
        for b in blocks:
            for a in b.adapters_of("default"):
                a.up_proj.weight.zero_()
                a.up_proj.bias.zero_()
    if method_rule(method).adds_modules:
        assert af.adapter_parameters(model, "default")
    with torch.no_grad():
        after = model.forward_features(X)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)


# -- the layers' own formula, written out by hand ----------------------------------------------


def _ln(x, norm):
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _attention(h, self_attn, out_dense, lora=None):
    """Multi-head self-attention from the weights; ``lora`` = (A, B, scaling) on fused q|k|v."""
    b, n, d = h.shape
    heads = self_attn.num_attention_heads
    w = torch.cat([self_attn.query.weight, self_attn.key.weight, self_attn.value.weight])
    bias = torch.cat([self_attn.query.bias, self_attn.key.bias, self_attn.value.bias])
    if lora is not None:
        a, bb, s = lora
        w = w + s * bb @ a
    q, k, v = (h @ w.T + bias).split(d, dim=-1)
    q, k, v = (t.view(b, n, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    att = (q @ k.transpose(-1, -2) / (d // heads) ** 0.5).softmax(-1)
    ctx = (att @ v).transpose(1, 2).reshape(b, n, d)
    return ctx @ out_dense.weight.T + out_dense.bias


def _adapter(m, z):
    act = {"relu": F.relu, "gelu": F.gelu}[m.activation]
    return m.scale * (act(z @ m.down_proj.weight.T + m.down_proj.bias) @ m.up_proj.weight.T
                      + m.up_proj.bias)  # fmt: skip


def _by_hand(layer, x, kind):
    """The HF layer's forward (transformers 4.56+ source) plus the adapter rules, by hand."""
    mods = {a.reads: a for a in layer.adapters_of("default")}
    lora = None
    q = layer.attention.attention.query
    if hasattr(q, "lora_A") and "default" in q.lora_A:
        lora = (q.lora_A["default"].weight, q.lora_B["default"].weight, q.lora_scaling["default"])
    att = layer.attention
    if kind == "vit":
        a = _attention(_ln(x, layer.layernorm_before), att.attention, att.output.dense, lora)
    else:
        a = layer.layer_scale1.lambda1 * _attention(
            _ln(x, layer.norm1), att.attention, att.output.dense, lora
        )
    x1 = x + a + (_adapter(mods["attn"], a) if "attn" in mods else 0)
    if kind == "vit":
        h = F.gelu(_ln(x1, layer.layernorm_after) @ layer.intermediate.dense.weight.T
                   + layer.intermediate.dense.bias)  # fmt: skip
        mlp = h @ layer.output.dense.weight.T + layer.output.dense.bias
    else:
        h = F.gelu(_ln(x1, layer.norm2) @ layer.mlp.fc1.weight.T + layer.mlp.fc1.bias)
        mlp = layer.layer_scale2.lambda1 * (h @ layer.mlp.fc2.weight.T + layer.mlp.fc2.bias)
    out = x1 + mlp
    if "parallel" in mods:
        out = out + _adapter(mods["parallel"], x1)
    if "sequential" in mods:
        out = out + _adapter(mods["sequential"], mlp)
    if "post" in mods:
        out = out + _adapter(mods["post"], out)
    return out


FORMULA = {  # every adapter point: parallel, sequential, houlsby (attn + sequential), post, LoRA
    "adaptformer": {},
    "adaptformer-sequential": {"position": "sequential"},
    "houlsby": {},
    "pfeiffer": {},
    "adapter_plus": {},
    "lora": {},
}


@pytest.mark.parametrize("kind", ["vit", "dinov2"])
@pytest.mark.parametrize("spec", list(FORMULA))
def test_adapted_layer_equals_the_formula_by_hand(kind, spec):
    model = wrapped(kind)
    original = copy.deepcopy(model.encoder.layer[1])
    af.inject(model, config(spec.split("-")[0], **FORMULA[spec]))
    randomize_adapter(model)
    layer = model.encoder.layer[1]
    x = torch.randn(2, 17, 48)
    with torch.no_grad():
        got = layer(x)
        assert type(got) is type(original(x))  # the installed version's return type
        expected = _by_hand(layer, x, kind)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        assert (got - original(x)).abs().max() > 1e-2  # the adapters really act


def test_lora_on_query_key_value_is_one_fused_matrix():
    """One ``A`` (r x d) and one ``B`` (3d x r) per block, under timm's canonical keys."""
    model = wrapped("dinov2")
    af.inject(model, config("lora"))
    shapes = {k: tuple(p.shape) for k, p in af.adapter_parameters(model, "default").items()}
    assert shapes == {
        f"blocks.{i}.attn.qkv.lora_{m}.default.weight": shape
        for i in range(2)
        for m, shape in (("A", (8, 48)), ("B", (144, 8)))
    }


# -- the same weights through timm and Hugging Face --------------------------------------------


def _same_adapters(src, dst, name: str = "default") -> None:
    """Copy ``src``'s adapter and head into ``dst`` through the canonical names."""
    theirs = af.adapter_parameters(dst, name)
    with torch.no_grad():
        for k, p in af.adapter_parameters(src, name).items():
            theirs[k].copy_(p)
        af.get_head(dst, name).load_state_dict(af.get_head(src, name).state_dict())


TWINS = {  # timm tiny_vit -> HF model type of the same computation
    "vit": dict(layer_scale=False),
    "dinov2": dict(layer_scale=True),
}
TWIN_METHODS = {
    "adaptformer": config("adaptformer"),
    "lora": config("lora"),
    "pfeiffer": config("pfeiffer"),
    "vpt": af.AdapterConfig(method="vpt", prompt_tokens=3),
}


@pytest.fixture(scope="module", params=list(TWINS))
def twins(request, tmp_path_factory):
    """A random timm ViT and the same weights loaded through ``--model hf:FOLDER``."""
    torch.manual_seed(0)
    timm_model = tiny_vit(depth=2, num_classes=0, **TWINS[request.param])
    with torch.no_grad():
        for name, p in timm_model.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.2, 1.0)
    folder = save_timm_as_hf(timm_model, tmp_path_factory.mktemp("hf"), request.param)
    return timm_model, folder, request.param


@pytest.mark.parametrize("method", list(TWIN_METHODS))
def test_same_weights_same_logits_through_timm_and_hf(twins, method, tmp_path):
    timm_model, folder, kind = twins
    a = copy.deepcopy(timm_model)
    b = pretrained_backbone(f"hf:{folder}", None, 32)
    assert b.model_type == kind
    for m in (a, b):
        af.inject(m, TWIN_METHODS[method], num_classes=5)
    randomize_adapter(a)
    randomize_(af.get_head(a, "default"), std=0.5)
    _same_adapters(a, b)
    a.eval(), b.eval()
    with torch.no_grad():
        torch.testing.assert_close(b(X), a(X), atol=1e-5, rtol=0)
        with af.disable_adapters(b):
            assert not torch.allclose(b(X), a(X), atol=1e-3)
    # a task file written by one implementation loads into the other, both ways
    for src, dst_of in ((a, lambda: load_hf_backbone(folder)),
                        (b, lambda: copy.deepcopy(timm_model))):  # fmt: skip
        af.save_adapter(src, tmp_path / "task")
        dst = af.load_adapter(dst_of(), tmp_path / "task").eval()
        with torch.no_grad():
            torch.testing.assert_close(dst(X), src(X), atol=1e-5, rtol=0)


# -- mixed-task batches and export ------------------------------------------------------------

TASKS = {
    "ada": (af.AdapterConfig(bottleneck=8), 5),
    "aplus": (af.AdapterConfig(method="adapter_plus", bottleneck=4), 3),
    "houlsby": (af.AdapterConfig(method="houlsby", bottleneck=4, layers=[1]), 4),
    "lora": (af.AdapterConfig(method="lora", bottleneck=4), 6),
    "lin": (af.AdapterConfig(method="linear"), 4),
    "vpt": (af.AdapterConfig(method="vpt", prompt_tokens=3), 2),
    "vpt1": (af.AdapterConfig(method="vpt", prompt_tokens=1), 3),
    "vpt_sh": (af.AdapterConfig(method="vpt", prompt_tokens=2, prompt_mode="shallow"), 7),
}


@pytest.fixture(scope="module", params=KINDS)
def multi(request):
    torch.manual_seed(0)
    model = wrapped(request.param)
    for name, (cfg, classes) in TASKS.items():
        af.inject(model, cfg, name=name, num_classes=classes)
        randomize_adapter(model, name)
        randomize_(af.get_head(model, name), std=0.5)
    return model.eval()


def test_mixed_batch_equals_each_task_on_its_own(multi):
    """Prompt tasks of 3, 1 and 2 tokens share a batch: the padded prompt slots are masked
    through the attention branch's ``attn_mask`` (HF attention takes only a head mask)."""
    names = list(TASKS)
    rng = random.Random(0)
    tasks = names + [rng.choice(names) for _ in range(4)]
    rng.shuffle(tasks)
    x = torch.randn(len(tasks), 3, 32, 32)
    with torch.no_grad():
        got = af.forward_tasks(multi, x, tasks).per_sample()
        for i, t in enumerate(tasks):
            af.set_adapter(multi, t)
            torch.testing.assert_close(got[i], multi(x[i : i + 1])[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_one_and_several_tasks(multi, fmt, tmp_path):
    from adaptformer.serving.export import export_model

    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="verifying ONNX needs onnxruntime")
    one = export_model(multi, tmp_path / f"one.{fmt}", fmt, tasks=["lora"])
    several = export_model(multi, tmp_path / f"all.{fmt}", fmt, tasks=["ada", "vpt", "vpt1"])
    assert one.max_abs_error < 1e-4 and several.max_abs_error < 1e-4
    assert one.info["image_shape"] == ["batch", 3, 32, 32]


# -- the shared DINOv2 ViT-S/14: timm's implementation and Hugging Face's ----------------------


@pytest.fixture(scope="module")
def shared_twins(shared_backbone, tmp_path_factory):
    """The shared weights through timm and through an HF ``Dinov2Model`` save_pretrained folder
    (float16 as the file, so both paths resample the same position grid), both at 112 px."""
    timm_518 = af.create_backbone("vit_small_patch14_dinov2", checkpoint=shared_backbone)
    folder = tmp_path_factory.mktemp("dinov2_hf")
    save_timm_as_hf(timm_518, folder, "dinov2", dtype=torch.float16)
    timm_112 = af.create_backbone(
        "vit_small_patch14_dinov2", checkpoint=shared_backbone, img_size=112
    )
    return timm_112.eval(), load_hf_backbone(folder, img_size=112).eval(), folder


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.parametrize("method", ["adaptformer", "lora", "adapter_plus"])
def test_shared_dinov2_same_logits_and_task_files_across_implementations(
    shared_twins, method, tmp_path
):
    timm_model, hf_model, folder = shared_twins
    a, b = copy.deepcopy(timm_model), copy.deepcopy(hf_model)
    assert pretrained_backbone(f"hf:{folder}", None, 112).img_size == 112
    for m in (a, b):
        af.inject(m, config(method), num_classes=10)
    randomize_adapter(a, std=0.05)
    _same_adapters(a, b)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), atol=1e-5, rtol=0)
        with af.disable_adapters(b):
            assert not torch.allclose(b(x), a(x), atol=1e-3)
    # a task trained (a few real steps) and saved on timm loads into HF, and back
    af.mark_trainable(a, method)
    opt = torch.optim.SGD([p for p in a.parameters() if p.requires_grad], lr=0.5)
    a.train()
    for _ in range(2):
        F.cross_entropy(a(x), torch.tensor([1, 7])).backward()
        opt.step()
        opt.zero_grad()
    a.eval()
    af.save_adapter(a, tmp_path / "from_timm")
    into_hf = af.load_adapter(copy.deepcopy(hf_model), tmp_path / "from_timm").eval()
    af.save_adapter(into_hf, tmp_path / "from_hf")
    into_timm = af.load_adapter(copy.deepcopy(timm_model), tmp_path / "from_hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(into_hf(x), a(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(into_timm(x), a(x), atol=1e-5, rtol=0)
