"""`adaptformer tasks`, `predict --tasks` and `export` end to end on two tiny trained runs."""

from __future__ import annotations

import json
import shutil

import pytest

from adaptformer.cli import main

from ..runs import cli_in_process as cli
from ..runs import make_checkpoint, make_image_folder, train_args

FAST = ("--epochs", "1", "--warmup-epochs", "0", "--max-steps-per-epoch", "2")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two runs on one backbone: AdaptFormer and LoRA (in-process: no interpreter start-ups)."""
    root = tmp_path_factory.mktemp("tasks")
    data = make_image_folder(root / "data", train_per_class=4, test_per_class=2)
    ckpt = make_checkpoint(root / "vit_tiny.safetensors")
    runs = {}
    for name, method in (("a", "adaptformer"), ("b", "lora")):
        runs[name] = root / f"run_{name}"
        argv = train_args(data, ckpt, runs[name], *FAST, "--method", method, "--bottleneck", "4")
        assert main(argv) == 0
    return root, data, runs


def test_registry_predict_and_export(trained, capsys):
    root, data, runs = trained
    reg = str(root / "registry")
    for name, run in runs.items():
        code, out, _ = cli(capsys, "tasks", "add", name, str(run), "--registry", reg)
        assert code == 0 and f"added task {name}" in out
    code, out, _ = cli(capsys, "tasks", "list", "--registry", reg, "--json")
    listing = json.loads(out)
    assert [t["name"] for t in listing["tasks"]] == ["a", "b"]
    assert [t["method"] for t in listing["tasks"]] == ["adaptformer", "lora"]
    code, out, _ = cli(capsys, "tasks", "list", "--registry", reg)
    assert "vit_tiny_patch16_224" in out and "lora" in out

    files = [
        str(data / "test" / "class_0" / "000.png"),
        str(data / "test" / "class_2" / "001.png"),
        str(data / "test" / "class_1" / "000.png"),
    ]
    code, out, _ = cli(
        capsys,
        "predict",
        "--tasks",
        "a,b",
        "--registry",
        reg,
        "--json",
        "--top-k",
        "3",
        "--batch-size",
        "2",
        *files,
    )
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["file"] for r in rows] == files and all(set(r["tasks"]) == {"a", "b"} for r in rows)
    for name, run in runs.items():  # each task answers as its own run does, alone
        code, out, _ = cli(capsys, "predict", "--run", str(run), "--json", "--top-k", "3", *files)
        alone = [json.loads(line)["top"] for line in out.splitlines()]
        for r, top in zip(rows, alone, strict=True):
            assert [c for c, _ in r["tasks"][name]] == [c for c, _ in top]
            assert [p for _, p in r["tasks"][name]] == pytest.approx([p for _, p in top], abs=2e-4)

    pytest.importorskip("onnxruntime")
    out_file = root / "ab.onnx"
    code, out, _ = cli(
        capsys,
        "export",
        "--tasks",
        "a,b",
        "--registry",
        reg,
        "--format",
        "onnx",
        "--out",
        str(out_file),
    )
    report = json.loads(out)
    assert code == 0 and report["tasks"] == ["a", "b"] and report["max_abs_error"] <= 1e-4
    assert out_file.is_file() and json.loads((root / "ab.onnx.json").read_text())["mean"]


def test_export_a_run_to_torchscript(trained, capsys):
    _, _, runs = trained
    code, out, _ = cli(capsys, "export", "--run", str(runs["a"]), "--format", "torchscript")
    report = json.loads(out)
    assert code == 0 and report["max_abs_error"] <= 1e-4
    assert report["path"].endswith("model.pt") and report["num_classes"] == [3]


def test_foreign_backbone_and_remove(trained, capsys):
    root, _, runs = trained
    reg = str(root / "registry2")
    assert cli(capsys, "tasks", "add", "a", str(runs["a"]), "--registry", reg)[0] == 0
    foreign = root / "foreign"
    shutil.copytree(runs["b"], foreign)
    config = json.loads((foreign / "adapter_config.json").read_text())
    config["metadata"]["backbone_sha256"] = "0" * 64  # as if trained on other weights
    (foreign / "adapter_config.json").write_text(json.dumps(config))
    code, _, err = cli(capsys, "tasks", "add", "x", str(foreign), "--registry", reg)
    assert code == 2 and "refusing" in err and "000000000000" in err
    code, out, _ = cli(capsys, "tasks", "remove", "a", "--registry", reg)
    assert code == 0 and "removed task a" in out
    code, out, _ = cli(capsys, "tasks", "list", "--registry", reg)
    assert "no tasks" in out
    code, _, err = cli(capsys, "predict", "--tasks", "a", "--registry", reg, "x.png")
    assert code == 2 and "is empty" in err


def _edited_run(root, run, name, edit):
    """A copy of ``run`` whose tensors ``edit`` changed (the file stays a valid safetensors)."""
    from safetensors.torch import load_file, save_file

    copy = root / name
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run, copy)
    weights = copy / "adapter_model.safetensors"
    tensors = load_file(weights)
    edit(tensors)
    save_file(tensors, str(weights), {"format": "adaptformer-adapter/1"})
    return copy


def _drop_one(tensors):
    del tensors[next(k for k in sorted(tensors) if "adaptmlp" in k)]


def _add_one(tensors):
    tensors["blocks.0.adaptmlp.extra.weight"] = tensors["head.bias"].clone()


def _int_head(tensors):
    tensors["head.bias"] = tensors["head.bias"].round().long()


@pytest.mark.parametrize(
    "edit, match",
    [
        (_drop_one, "missing from file"),
        (_add_one, "not in model.*extra"),
        (_int_head, "wrong kind of number.*head.bias"),
    ],
)
def test_tasks_add_checks_what_loading_checks(trained, capsys, edit, match):
    """`tasks add` accepted adapters that cannot load, and `serve` then refused the registry."""
    import re

    root, _, runs = trained
    reg = root / f"registry_{edit.__name__}"
    assert cli(capsys, "tasks", "add", "a", str(runs["a"]), "--registry", str(reg))[0] == 0
    index = (reg / "registry.json").read_bytes()
    bad = _edited_run(root, runs["a"], f"bad{edit.__name__}", edit)
    code, out, err = cli(capsys, "tasks", "add", "bad", str(bad), "--registry", str(reg))
    assert code == 2 and re.search(match, err) and len(err.strip().splitlines()) == 1
    assert (reg / "registry.json").read_bytes() == index and not (reg / "bad").exists()
    code, out, _ = cli(capsys, "tasks", "list", "--registry", str(reg), "--json")
    assert [t["name"] for t in json.loads(out)["tasks"]] == ["a"]


def test_tasks_list_shows_a_broken_task_instead_of_failing(trained, capsys):
    root, _, runs = trained
    reg = root / "registry_broken"
    for name, run in runs.items():
        assert cli(capsys, "tasks", "add", name, str(run), "--registry", str(reg))[0] == 0
    (reg / "a" / "adapter_config.json").write_text("{")
    code, out, _ = cli(capsys, "tasks", "list", "--registry", str(reg))
    assert code == 0 and "BROKEN" in out and "not valid JSON" in out and "lora" in out
    code, out, _ = cli(capsys, "tasks", "list", "--registry", str(reg), "--json")
    rows = {t["name"]: t for t in json.loads(out)["tasks"]}
    assert rows["a"]["problem"] and not rows["b"]["problem"]
