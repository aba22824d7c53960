"""``--model hf:FOLDER`` end to end: train, eval, predict, tasks, export and serve a tiny Hugging
Face DINOv2 saved with ``save_pretrained`` (in-process; no ../shared needed)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import adaptformer as af
from adaptformer.cli import main

from ..helpers import tiny_hf
from ..runs import cli_in_process as cli
from ..runs import make_image_folder

pytest.importorskip("transformers", reason="transformers not installed ('.[hf]')")

FAST = ("--epochs", "1", "--warmup-epochs", "0", "--max-steps-per-epoch", "2")


def hf_train_args(data, folder, out, *extra):
    return ["train", "--model", f"hf:{folder}", "--dataset", "imagefolder",
            "--data-root", str(data), "--img-size", "32", "--batch-size", "8", "--workers", "0",
            "--val-fraction", "0.25", "--output", str(out), "--no-divergence-guard", *FAST,
            *extra]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_cli")
    data = make_image_folder(root / "data", train_per_class=4, test_per_class=2)
    torch.manual_seed(0)
    tiny_hf("dinov2").save_pretrained(root / "dinov2")
    runs = {}
    for name, extra in (("a", ("--method", "adaptformer", "--bottleneck", "4")),
                        ("b", ("--method", "vpt", "--prompt-tokens", "2"))):  # fmt: skip
        runs[name] = root / f"run_{name}"
        assert main(hf_train_args(data, root / "dinov2", runs[name], *extra)) == 0
    return root, data, runs


def test_train_records_the_hf_backbone_and_eval_reproduces(trained, capsys):
    root, _, runs = trained
    info = json.loads((runs["a"] / "adapter_config.json").read_text())
    assert info["backbone"]["family"] == "hf-dinov2"
    assert info["backbone"]["architecture"] == "hf-dinov2"
    assert info["metadata"]["model"] == f"hf:{root / 'dinov2'}"
    assert info["metadata"]["mean"] == [0.485, 0.456, 0.406]
    code, _, _ = cli(capsys, "eval", "--run", str(runs["a"]), "--workers", "0")
    summary = json.loads((runs["a"] / "summary.json").read_text())
    assert code == 0
    assert json.loads((runs["a"] / "eval.json").read_text())["test_top1"] == summary["test_top1"]


def test_tasks_predict_export_and_serve(trained, capsys):
    root, data, runs = trained
    reg = str(root / "registry")
    for name, run in runs.items():
        assert cli(capsys, "tasks", "add", name, str(run), "--registry", reg)[0] == 0
    files = [str(data / "test" / "class_0" / "000.png"), str(data / "test" / "class_2" / "001.png")]
    code, out, _ = cli(capsys, "predict", "--tasks", "a,b", "--registry", reg, "--json",
                       "--top-k", "3", *files)  # fmt: skip
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    for name, run in runs.items():  # each task answers as its own run does, alone
        code, out, _ = cli(capsys, "predict", "--run", str(run), "--json", "--top-k", "3", *files)
        alone = [json.loads(line)["top"] for line in out.splitlines()]
        for r, top in zip(rows, alone, strict=True):
            assert [p for _, p in r["tasks"][name]] == pytest.approx([p for _, p in top], abs=2e-4)

    verifiable = importlib.util.find_spec("onnxruntime") is not None  # ONNX checks need it
    for fmt in ("onnx", "torchscript") if verifiable else ("torchscript",):
        code, out, _ = cli(capsys, "export", "--tasks", "a,b", "--registry", reg, "--format",
                           fmt, "--out", str(root / f"ab.{fmt}"))  # fmt: skip
        report = json.loads(out)
        assert code == 0 and report["max_abs_error"] <= 1e-4

    pytest.importorskip("starlette", reason="serving needs the [serve] extra")
    from starlette.testclient import TestClient

    from adaptformer.serving.app import create_app
    from adaptformer.serving.catalog import Catalog

    catalog = Catalog.from_registry(af.TaskRegistry(reg))
    image = Path(files[0]).read_bytes()
    with TestClient(create_app(catalog), base_url="http://localhost") as client:
        r = client.post("/v1/predict", files=[("image", ("x.png", image, "image/png"))],
                        data={"tasks": "a,b", "top_k": "3"})  # fmt: skip
    assert r.status_code == 200, r.text
    served = r.json()["results"][0]["tasks"]
    for name in runs:
        assert [p["prob"] for p in served[name]["top"]] == pytest.approx(
            [p for _, p in rows[0]["tasks"][name]], abs=2e-4
        )
