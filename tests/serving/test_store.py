"""The task registry: add/list/remove, one backbone per registry, foreign adapters refused."""

from __future__ import annotations

import json

import pytest
import torch

import adaptformer as af
from adaptformer.adapters.trainable import backbone_fingerprint

from ..helpers import tiny_vit


def save_task(model, directory, name, cfg, classes, **meta):
    """A trained-looking task folder: adapter files with the metadata `adaptformer train` writes."""
    af.inject(model, cfg, name=name, num_classes=classes)
    with torch.no_grad():
        for p in af.adapter_parameters(model, name).values():
            p.normal_(0.0, 0.2)
    metadata = {
        "model": "tiny",
        "img_size": 32,
        "backbone_sha256": backbone_fingerprint(model),
        "classes": [f"c{i}" for i in range(classes)],
        **meta,
    }
    return af.save_adapter(model, directory, name, metadata=metadata)


@pytest.fixture
def runs(tmp_path):
    torch.manual_seed(0)
    model = tiny_vit()
    a = save_task(model, tmp_path / "run_a", "a", af.AdapterConfig(bottleneck=4), 3)
    b = save_task(model, tmp_path / "run_b", "b", af.AdapterConfig(method="lora", bottleneck=2), 5)
    return model, a, b


def test_add_list_remove(tmp_path, runs):
    model, a, b = runs
    reg = af.TaskRegistry(tmp_path / "reg")
    assert reg.names() == [] and reg.backbone is None
    reg.add("alpha", a)
    info = reg.add("beta", b)
    assert info.method == "lora" and info.num_classes == 5 and info.bytes > 0
    assert [t.name for t in reg.list()] == ["alpha", "beta"]
    assert reg.backbone["backbone_sha256"] == backbone_fingerprint(model)
    assert reg.metadata("beta")["classes"][-1] == "c4"
    with pytest.raises(ValueError, match="exists"):
        reg.add("alpha", b)
    reg.add("alpha", b, replace=True)
    assert reg.list()[0].method == "lora"
    reg.remove("alpha")
    assert reg.names() == ["beta"] and not (reg.root / "alpha").exists()
    with pytest.raises(KeyError, match="no task 'alpha'"):
        reg.remove("alpha")
    reg.remove("beta")
    assert reg.backbone is None  # an empty registry forgets its backbone


def test_load_all_gives_one_backbone_every_task(tmp_path, runs):
    model, a, b = runs
    reg = af.TaskRegistry(tmp_path / "reg")
    reg.add("alpha", a)
    reg.add("beta", b)
    fresh = tiny_vit()
    missing, _ = fresh.load_state_dict(af.backbone_parameters(model), strict=False)
    assert missing == ["head.weight", "head.bias"]
    reg.load_all(fresh)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out = af.forward_tasks(fresh, x, ["beta", "alpha", "alpha", "beta"])
        af.set_adapter(model, "a")
        torch.testing.assert_close(out.task_rows("alpha")[1], model(x[1:3]), atol=1e-5, rtol=0)


def test_every_adapter_preset_registers_and_mixes_with_the_others(tmp_path):
    torch.manual_seed(0)
    model = tiny_vit(layer_scale=True)
    reg = af.TaskRegistry(tmp_path / "reg")
    presets = ["adaptformer", "adapter_plus", "houlsby", "pfeiffer"]
    for i, method in enumerate(presets):
        cfg = af.AdapterConfig(method=method, bottleneck=4)
        reg.add(method, save_task(model, tmp_path / method, method, cfg, 3 + i))
    assert [t.method for t in reg.list()] == sorted(presets)
    fresh = tiny_vit(layer_scale=True)
    fresh.load_state_dict(af.backbone_parameters(model), strict=False)
    reg.load_all(fresh)
    x = torch.randn(5, 3, 32, 32)
    tasks = ["houlsby", "adaptformer", "pfeiffer", "adapter_plus", "houlsby"]
    with torch.no_grad():
        out = af.forward_tasks(fresh, x, tasks)
        for i, t in enumerate(tasks):
            af.set_adapter(model, t)
            torch.testing.assert_close(
                out.per_sample()[i], model(x[i : i + 1])[0], atol=1e-5, rtol=0
            )


def test_foreign_backbone_is_refused_with_a_clear_error(tmp_path, runs):
    _, a, _ = runs
    reg = af.TaskRegistry(tmp_path / "reg")
    reg.add("alpha", a)
    other = tiny_vit()  # same architecture, other weights
    c = save_task(other, tmp_path / "run_c", "c", af.AdapterConfig(bottleneck=4), 3)
    with pytest.raises(ValueError, match=r"refusing .*run_c.* trained on backbone tiny.*sha256"):
        reg.add("gamma", c)
    assert reg.names() == ["alpha"] and not (reg.root / "gamma").exists()
    with pytest.raises(ValueError, match="is not the one the registry"):
        reg.load_all(other)


def test_unregistrable_runs(tmp_path, runs):
    model, a, _ = runs
    reg = af.TaskRegistry(tmp_path / "reg")
    with pytest.raises(ValueError, match="may only hold"):
        reg.add("a.b", a)
    bare = af.save_adapter(model, tmp_path / "bare", "a")  # no backbone metadata
    with pytest.raises(ValueError, match="records no backbone"):
        reg.add("bare", bare)
    full = save_task(tiny_vit(), tmp_path / "full", "f", af.AdapterConfig(method="full"), 2)
    with pytest.raises(ValueError, match="changes the backbone's own weights"):
        reg.add("full", full)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        reg.add("nothing", tmp_path / "missing")
    assert not (reg.root / "registry.json").exists()


def test_default_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTFORMER_TASKS", str(tmp_path / "env"))
    assert af.TaskRegistry().root == tmp_path / "env"
    monkeypatch.delenv("ADAPTFORMER_TASKS")
    assert af.TaskRegistry().root.parts[-3:] == (".cache", "adaptformer", "tasks")


def test_index_is_json_with_provenance(tmp_path, runs):
    _, a, _ = runs
    reg = af.TaskRegistry(tmp_path / "reg")
    reg.add("alpha", a)
    index = json.loads((reg.root / "registry.json").read_text())
    assert index["format"] == "adaptformer-tasks/1"
    assert index["tasks"]["alpha"]["source"] == str(a.resolve())
    assert index["backbone"]["model"] == "tiny" and index["backbone"]["img_size"] == 32


# -- untrusted names, registries and task files ------------------------------------------------


@pytest.mark.parametrize("name", ["nl\n", "a\n", "../x", "", "a/b", " a"])
def test_names_must_match_whole(tmp_path, runs, name):
    _, a, _ = runs
    reg = af.TaskRegistry(tmp_path / "reg")
    with pytest.raises(ValueError, match="may only hold"):
        reg.add(name, a)
    assert not (tmp_path / "reg").exists() or list((tmp_path / "reg").iterdir()) == []


def _registry_and_victim(tmp_path, run):
    """A registry with task ``alpha`` and a folder outside it that must survive."""
    reg = af.TaskRegistry(tmp_path / "reg")
    reg.add("alpha", run)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep")
    return reg, victim


def test_a_tampered_registry_cannot_remove_outside_it(tmp_path, runs):
    """registry.json key ``../victim`` plus `tasks remove ../victim` deleted a folder outside."""
    reg, victim = _registry_and_victim(tmp_path, runs[1])
    index = json.loads((reg.root / "registry.json").read_text())
    index["tasks"]["../victim"] = index["tasks"]["alpha"]
    (reg.root / "registry.json").write_text(json.dumps(index))
    for call in (lambda: reg.remove("../victim"), reg.names, reg.list):
        with pytest.raises(ValueError, match="damaged|may only hold"):
            call()
    assert (victim / "precious.txt").read_text() == "keep"


def test_a_task_folder_that_is_a_link_is_refused(tmp_path, runs):
    import shutil

    reg, victim = _registry_and_victim(tmp_path, runs[1])
    shutil.rmtree(reg.root / "alpha")
    (reg.root / "alpha").symlink_to(victim, target_is_directory=True)
    with pytest.raises(ValueError, match="is a link or lies outside the registry"):
        reg.remove("alpha")
    assert (victim / "precious.txt").read_text() == "keep"


@pytest.mark.parametrize("damage", ["truncate", "nan", "huge"])
def test_add_load_checks_the_task_first(tmp_path, runs, damage):
    """A truncated file was copied in and crashed `predict --tasks` later."""
    _, a, _ = runs
    weights = a / "adapter_model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "nan":
        from safetensors.torch import load_file, save_file

        tensors = load_file(weights)
        tensors["head.weight"][0, 0] = float("nan")
        save_file(tensors, str(weights))
    else:
        info = json.loads((a / "adapter_config.json").read_text())
        (a / "adapter_config.json").write_text(json.dumps({**info, "num_classes": 10**9}))
    reg = af.TaskRegistry(tmp_path / "reg")
    with pytest.raises(ValueError, match="not a valid safetensors|NaN or infinite|num_classes="):
        reg.add("alpha", a)
    assert reg.names() == [] and not (reg.root / "alpha").exists()


def test_class_names_fall_back_to_indices_for_bad_metadata():
    from adaptformer.serving.store import class_names

    assert class_names({"classes": ["cat", "dog"]}, 2) == ["cat", "dog"]
    assert class_names({"classes": ["cat"]}, 2) == ["0", "1"]  # wrong length
    assert class_names({"classes": {"a": 1, "b": 2}}, 2) == ["0", "1"]  # not a list
    assert class_names({}, 3) == ["0", "1", "2"]


def test_top_k_is_softmax_or_sigmoid_and_never_longer_than_the_row():
    import torch

    from adaptformer.serving.multitask import top_k

    logits = torch.tensor([0.0, 2.0, 1.0])
    ranked = top_k(logits, 5, multilabel=False)
    assert [i for i, _ in ranked] == [1, 2, 0]
    assert sum(p for _, p in ranked) == pytest.approx(1.0)
    assert top_k(logits, 1, multilabel=True)[0][1] == pytest.approx(
        torch.sigmoid(torch.tensor(2.0)).item()
    )
