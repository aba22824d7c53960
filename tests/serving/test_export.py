"""Exported models (ONNX, TorchScript; one task or several) reproduce PyTorch within 1e-4."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import adaptformer as af
from adaptformer.serving.export import export_model

from ..helpers import randomize_, tiny_vit

TASKS = {
    "ada": (af.AdapterConfig(bottleneck=8), 5),
    "lora": (af.AdapterConfig(method="lora", bottleneck=4), 3),
    "vpt": (af.AdapterConfig(method="vpt", prompt_tokens=2), 4),
    "lin": (af.AdapterConfig(method="linear"), 2),
    "aplus": (af.AdapterConfig(method="adapter_plus", bottleneck=4), 3),
    "houlsby": (af.AdapterConfig(method="houlsby", bottleneck=4), 4),
    "pfeiffer": (af.AdapterConfig(method="pfeiffer", bottleneck=4), 2),
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = tiny_vit(depth=2, layer_scale=True)
    for name, (cfg, classes) in TASKS.items():
        af.inject(m, cfg, name=name, num_classes=classes)
        with torch.no_grad():
            for p in af.adapter_parameters(m, name).values():
                p.normal_(0.0, 0.2)
        randomize_(af.get_head(m, name), std=0.5)
    af.set_adapter(m, "ada")
    return m.eval()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("task", ["lora", "aplus", "houlsby", "pfeiffer"])
def test_single_task_export_matches_pytorch(model, fmt, task, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    path = tmp_path / f"m.{fmt}"
    result = export_model(model, path, fmt, tasks=[task])
    assert result.max_abs_error is not None and result.max_abs_error <= 1e-4
    assert result.num_classes == [TASKS[task][1]] and path.stat().st_size == result.bytes
    assert model.adaptformer.active == "ada"  # the caller's active task is restored
    sidecar = json.loads((tmp_path / f"m.{fmt}.json").read_text())
    assert sidecar["tasks"] == [task] and sidecar["inputs"] == ["image"]


def test_multi_task_onnx_answers_each_row_with_its_task(model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    names = ["lin", "vpt", "ada", "lora", "aplus", "houlsby", "pfeiffer"]
    path = tmp_path / "multi.onnx"
    result = export_model(model, path, "onnx", tasks=names, metadata={"note": "x"})
    assert result.max_abs_error <= 1e-4
    # an independent check on a batch of 7 with repeated and missing tasks
    x = torch.randn(7, 3, 32, 32)
    index = np.array([1, 4, 2, 0, 5, 6, 0], dtype=np.int64)
    got = ort.InferenceSession(str(path)).run(None, {"image": x.numpy(), "task_index": index})[0]
    with torch.no_grad():
        ref = af.forward_tasks(model, x, [names[i] for i in index])
    assert got.shape == (7, 5)
    for i, row in enumerate(ref.per_sample()):
        c = row.shape[0]
        np.testing.assert_allclose(got[i, :c], row.numpy(), atol=1e-4, rtol=0)
        assert np.isneginf(got[i, c:]).all()
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    info = json.loads(meta["adaptformer"])
    assert info["tasks"] == names and info["note"] == "x"
    assert info["num_classes"] == [TASKS[n][1] for n in names]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_multi_task_torchscript(model, tmp_path):
    path = tmp_path / "multi.pt"
    result = export_model(model, path, "torchscript", tasks=["ada", "vpt"])
    assert result.max_abs_error <= 1e-4
    loaded = torch.jit.load(str(path))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = loaded(x, torch.tensor([1, 0, 1]))
        ref = af.forward_tasks(model, x, ["vpt", "ada", "vpt"])
    torch.testing.assert_close(
        out[:, :5][torch.isfinite(ref.logits)],
        ref.logits[torch.isfinite(ref.logits)],
        atol=1e-4,
        rtol=0,
    )


def test_bad_format_or_task_is_a_clear_error(model, tmp_path):
    with pytest.raises(ValueError, match="unknown export format"):
        export_model(model, tmp_path / "m", "tflite")
    with pytest.raises(ValueError, match="cannot export task"):
        export_model(model, tmp_path / "m.onnx", "torchscript", tasks=["ada", "nope"])


def test_a_batchnorm_head_exports_to_onnx(tmp_path):
    """`export --format onnx` of a linear --head-batchnorm run failed with a SymbolicValueError."""
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    m = tiny_vit(depth=2)
    af.inject(m, af.AdapterConfig(method="linear", head_batchnorm=True), num_classes=3)
    norm = m.head[0]
    with torch.no_grad():
        norm.running_mean.normal_(0.0, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
    result = export_model(m.eval(), tmp_path / "bn.onnx", format="onnx")
    assert result.max_abs_error < 1e-4
    assert "forward" not in vars(norm)  # the model itself is left as it was


def test_an_export_without_its_verifier_writes_nothing(model, tmp_path, monkeypatch):
    """No onnxruntime: one error before any export work, and no unverified file left."""
    import sys

    from adaptformer.utils.errors import UserFacingError

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    path = tmp_path / "m.onnx"
    with pytest.raises(UserFacingError, match="needs onnxruntime.*nothing was written"):
        export_model(model, path, "onnx", tasks=["ada"])
    assert list(tmp_path.iterdir()) == []


def test_a_failed_check_leaves_no_file_and_keeps_a_previous_one(model, tmp_path):
    from adaptformer.utils.errors import UserFacingError

    path = tmp_path / "m.pt"
    path.write_bytes(b"a good model from before")
    with pytest.raises(UserFacingError, match="differs from PyTorch"):
        export_model(model, path, "torchscript", tasks=["ada"], tolerance=-1.0)
    assert path.read_bytes() == b"a good model from before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
