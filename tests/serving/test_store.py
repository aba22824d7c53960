"""The task registry: add/list/remove, one backbone per registry, foreign adapters refused."""

from __future__ import annotations

import json

import pytest
import torch

import adaptformer as af
from adaptformer.adapters.trainable import backbone_fingerprint

from ..helpers import refusal_without_hanging, tiny_vit
from .conftest import TASKS


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


# -- issue #24: concurrent admins, crashes, refused changes, hostile registries ----------------


def _tree(root):
    """Every file under ``root`` (hidden ones too) with its bytes: a refused change keeps it."""
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
        for p in sorted(root.rglob("*"))
        if not p.name.endswith(".lock")
    }


def _many(tmp_path, run, count, prefix="e"):
    reg = af.TaskRegistry(tmp_path / "reg")
    for i in range(count):
        reg.add(f"{prefix}{i}", run)
    return reg


def _in_threads(calls):
    """Run ``calls`` at once (a barrier releases them together); re-raise the first error."""
    import threading

    barrier = threading.Barrier(len(calls))
    errors = []

    def go(call):
        barrier.wait()
        try:
            call()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=go, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a registry change hung"
    if errors:
        raise errors[0]


def test_parallel_removes_from_threads_leave_a_consistent_registry(tmp_path, runs):
    """20 concurrent DELETEs answered 200 but left 12 names in registry.json."""
    reg = _many(tmp_path, runs[1], 20)
    _in_threads([lambda i=i: af.TaskRegistry(reg.root).remove(f"e{i}") for i in range(20)])
    assert reg.names() == [] and reg.backbone is None
    assert sorted(p.name for p in reg.root.iterdir()) == ["registry.json", "registry.lock"]


def test_parallel_adds_replaces_and_removes_from_threads(tmp_path, runs):
    _, a, b = runs
    reg = _many(tmp_path, b, 6)
    calls = [lambda i=i: af.TaskRegistry(reg.root).remove(f"e{i}") for i in range(3)]
    calls += [lambda i=i: reg.add(f"e{i}", a, replace=True) for i in range(3, 6)]
    calls += [lambda i=i: af.TaskRegistry(reg.root).add(f"n{i}", a) for i in range(6)]
    _in_threads(calls)
    assert reg.names() == [f"e{i}" for i in range(3, 6)] + [f"n{i}" for i in range(6)]
    assert {t.name: t.method for t in reg.list()} == {n: "adaptformer" for n in reg.names()}
    fresh = tiny_vit()
    fresh.load_state_dict(af.backbone_parameters(runs[0]), strict=False)
    reg.load_all(fresh)  # every indexed folder is complete


def _cli_in_child(registry, run, action, prefix, count) -> int:
    """Fork a process that runs `adaptformer tasks ACTION` ``count`` times; its pid."""
    import os

    from adaptformer.cli import main

    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        for i in range(count):
            argv = ["tasks", action, f"{prefix}{i}", *([str(run)] if action == "add" else [])]
            code = code or main([*argv, "--registry", str(registry)])
    finally:
        os._exit(code or 0)


def test_two_processes_adding_and_removing_at_once(tmp_path, runs):
    """`adaptformer tasks` in two processes on one registry (POSIX record locks are per
    process, so forked children contend exactly like two commands): no change is lost."""
    import os

    _, a, b = runs
    reg = _many(tmp_path, b, 6, prefix="old")
    pids = [_cli_in_child(reg.root, a, "add", "p", 6), _cli_in_child(reg.root, a, "remove", "old", 6)]
    for pid in pids:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert reg.names() == [f"p{i}" for i in range(6)]
    assert [t.method for t in reg.list()] == ["adaptformer"] * 6


def _die_at_step(root, k, action, run):
    """In a forked child: change the registry, dying (no cleanup, like a kill) at the k-th
    rename/replace/rmtree; exit 0 if the change finished first."""
    import os
    import shutil

    calls = [0]

    def dying(real):
        def step(*args, **kwargs):
            calls[0] += 1
            if calls[0] == k:
                os._exit(17)
            return real(*args, **kwargs)

        return step

    os.rename, os.replace = dying(os.rename), dying(os.replace)
    shutil.rmtree = dying(shutil.rmtree)
    reg = af.TaskRegistry(root)
    if action == "replace":
        reg.add("t", run, replace=True)
    elif action == "remove":
        reg.remove("t")
    else:
        reg.add("u", run)
    os._exit(0)


@pytest.mark.parametrize("action", ["replace", "remove", "add"])
def test_a_crash_at_any_point_leaves_a_loadable_registry(tmp_path, runs, action):
    """The folder swap was rmtree then rename: a crash in between left an indexed task without
    its folder. Kill a forked writer at its k-th file-system change, for every k."""
    import os

    _, a, b = runs
    for k in range(1, 30):
        root = tmp_path / f"reg{k}"
        reg = af.TaskRegistry(root)
        reg.add("keep", b)
        reg.add("t", b)
        pid = os.fork()
        if pid == 0:
            _die_at_step(root, k, action, a)
        _, status = os.waitpid(pid, 0)
        crashed = os.waitstatus_to_exitcode(status) == 17
        reg = af.TaskRegistry(root)
        assert {"keep"} <= set(reg.names()) <= {"keep", "t", "u"}
        for info in reg.list():  # every indexed task is complete
            af.adapters.files.read_adapter_files(reg.path(info.name))
        methods = {t.name: t.method for t in reg.list()}
        if action == "replace":  # the old task or the new one, never a mix
            assert methods["t"] in ("adaptformer", "lora")
            entry = json.loads((root / "registry.json").read_text())["tasks"]["t"]
            assert entry["source"] == str((a if methods["t"] == "adaptformer" else b).resolve())
        reg.add("after", a)  # and it takes changes again
        assert not [p.name for p in root.iterdir() if ".old-" in p.name or ".new-" in p.name]
        if not crashed:
            break
    else:
        pytest.fail("the change never finished")


def test_a_refused_add_leaves_the_registry_byte_identical(tmp_path, runs):
    _, a, b = runs
    reg = af.TaskRegistry(tmp_path / "reg")
    reg.add("alpha", a)
    before = _tree(reg.root)
    other = save_task(tiny_vit(), tmp_path / "other", "o", af.AdapterConfig(bottleneck=4), 3)
    full = save_task(tiny_vit(), tmp_path / "full", "f", af.AdapterConfig(method="full"), 2)
    for call in (
        lambda: reg.add("alpha", b),  # exists
        lambda: reg.add("gamma", other),  # another backbone
        lambda: reg.add("gamma", full),  # changes the backbone
        lambda: reg.add("gamma", tmp_path / "missing"),
    ):
        with pytest.raises((ValueError, FileNotFoundError)):
            call()
        assert _tree(reg.root) == before


def test_an_add_is_not_refused_for_a_broken_task_elsewhere(tmp_path, runs):
    """With a broken entry elsewhere, add() wrote the task and then failed listing all tasks."""
    _, a, b = runs
    reg = af.TaskRegistry(tmp_path / "reg")
    reg.add("alpha", a)
    (reg.root / "alpha" / "adapter_config.json").write_text("{")
    info = reg.add("zz", b)
    assert info.name == "zz" and info.method == "lora" and "zz" in reg.names()


def test_a_fifo_in_a_run_folder_is_refused_without_hanging(tmp_path, runs):
    import os
    import shutil

    _, a, _ = runs
    run = tmp_path / "fifo_run"
    shutil.copytree(a, run)
    (run / "adapter_model.safetensors").unlink()
    os.mkfifo(run / "adapter_model.safetensors")
    reg = af.TaskRegistry(tmp_path / "reg")
    error = refusal_without_hanging(lambda: reg.add("f", run), run / "adapter_model.safetensors",
                                    "adding a run")  # fmt: skip
    assert "not a regular file" in str(error)


def _write_index(reg, edit):
    index = json.loads((reg.root / "registry.json").read_text())
    edit(index)
    (reg.root / "registry.json").write_text(json.dumps(index))


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda i: i["backbone"].update(img_size="abc"), "img_size"),
        (lambda i: i["backbone"].update(img_size=100000), "img_size"),
        (lambda i: i["backbone"].update(model=5), "model"),
        (lambda i: i["backbone"].update(backbone_sha256=["x"]), "backbone_sha256"),
        (lambda i: i["backbone"].update(checkpoint=7), "checkpoint"),
        (lambda i: i["backbone"].update(mean="red"), "mean"),
        (lambda i: i["tasks"]["alpha"].update(source=5), "source"),
        (lambda i: i.update(tasks={"alpha": {}}, backbone=None), "backbone"),
        (lambda i: i.update(tasks=[]), "tasks"),
    ],
)
def test_registry_json_types_are_checked_at_read_time(tmp_path, runs, edit, match):
    reg = af.TaskRegistry(tmp_path / "reg")
    reg.add("alpha", runs[1])
    _write_index(reg, edit)
    for call in (reg.names, lambda: reg.backbone, reg.list):
        with pytest.raises(ValueError, match=match) as err:
            call()
        assert "\n" not in str(err.value) and "registry.json" in str(err.value)


def test_a_pickled_backbone_in_the_registry_is_refused_in_one_line(tmp_path, runs):
    from fractions import Fraction

    reg = af.TaskRegistry(tmp_path / "reg")
    reg.add("alpha", runs[1])
    pickled = tmp_path / "backbone.pth"
    torch.save({"w": torch.zeros(2), "x": Fraction(1, 2)}, pickled)
    real = {"checkpoint": str(pickled), "model": "vit_tiny_patch16_224"}
    _write_index(reg, lambda i: i["backbone"].update(real))
    with pytest.raises(ValueError, match="backbone.pth") as err:
        reg.build_model()
    text = str(err.value)
    assert "\n" not in text and "weights_only" not in text and "trust" not in text


# -- the server's catalog on a registry (hot PUT/DELETE) --------------------------------------


def _catalog(registry):
    from adaptformer.serving.catalog import Catalog

    return Catalog.from_registry(registry)


def _answers(catalog, task):
    adapter = next(v.adapter for v in catalog.list() if v.name == task)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return af.forward_tasks(catalog.model, x, [adapter] * 3).logits.clone()


def _backbone_run(tmp_path, task_runs, method):
    """A `full`/`bitfit` run on the registry's backbone: its backbone tensors trained away from
    the shared ones, its metadata fingerprinting the backbone it started from."""
    from adaptformer.training.modality import data_stats

    from .conftest import IMG, MODEL, backbone

    ckpt = tmp_path / "ckpt.safetensors"
    import shutil

    shutil.copy(yaml_checkpoint(task_runs["shapes"]), ckpt)
    model = backbone(ckpt)
    sha = backbone_fingerprint(model)
    af.inject(model, af.AdapterConfig(method=method), name="t", num_classes=3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    meta = {"model": MODEL, "img_size": IMG, "backbone_sha256": sha, **data_stats(model)}
    return af.save_adapter(model, tmp_path / method, "t", metadata=meta)


def yaml_checkpoint(run):
    return (run / "config.yaml").read_text().split(":", 1)[1].strip()


@pytest.mark.parametrize("method", ["full", "bitfit"])
def test_a_backbone_changing_put_leaves_every_task_answering_alike(
    tmp_path, registry, task_runs, method
):
    """A PUT of a full/bitfit run loaded its backbone tensors into the shared model before the
    registry refused it: a 422, and every served task answered differently afterwards."""
    catalog = _catalog(registry)
    before = _answers(catalog, "shapes")
    tree = _tree(registry.root)
    run = _backbone_run(tmp_path, task_runs, method)
    with pytest.raises(ValueError, match="changes the backbone's own weights"):
        catalog.put("zz", run)
    assert torch.equal(_answers(catalog, "shapes"), before)
    assert _tree(registry.root) == tree and [v.name for v in catalog.list()] == sorted(TASKS)


def test_a_put_is_not_refused_for_a_broken_task_elsewhere(registry, task_runs):
    catalog = _catalog(registry)
    (registry.root / "probe" / "adapter_config.json").write_text("{")
    version = catalog.put("zz", task_runs["shapes_v2"])
    assert version.name == "zz" and "zz" in registry.names()


def test_a_put_refused_by_the_model_leaves_the_registry_byte_identical(tmp_path, registry):
    """The run fits its own recorded backbone, not the served one (another width)."""
    catalog = _catalog(registry)
    tree = _tree(registry.root)
    model = tiny_vit()
    sha = registry.backbone["backbone_sha256"]
    run = save_task(model, tmp_path / "narrow", "n", af.AdapterConfig(bottleneck=4), 3)
    info = json.loads((run / "adapter_config.json").read_text())
    info["metadata"].update(backbone_sha256=sha, model="vit_tiny_patch16_224")
    (run / "adapter_config.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="does not fit this model"):
        catalog.put("narrow", run)
    assert _tree(registry.root) == tree and "narrow" not in {v.name for v in catalog.list()}


def test_a_task_version_covers_its_config_too(tmp_path, registry, task_runs):
    """Tasks with another scale or other class names reported the same version."""
    import shutil

    catalog = _catalog(registry)
    for change in ({"classes": ["a", "b", "c"]}, {"scale": 3.0}):
        run = tmp_path / f"edited{len(catalog.list())}"
        shutil.copytree(task_runs["shapes"], run)
        info = json.loads((run / "adapter_config.json").read_text())
        if "scale" in change:
            info["config"].update(change)
        else:
            info["metadata"].update(change)
        (run / "adapter_config.json").write_text(json.dumps(info))
        name = run.name
        assert catalog.put(name, run).version != catalog.put("shapes").version


def test_a_fifo_put_is_refused_without_hanging(tmp_path, registry, task_runs):
    import os
    import shutil

    catalog = _catalog(registry)
    run = tmp_path / "fifo"
    shutil.copytree(task_runs["shapes_v2"], run)
    (run / "adapter_model.safetensors").unlink()
    os.mkfifo(run / "adapter_model.safetensors")
    error = refusal_without_hanging(lambda: catalog.put("fifo", run),
                                    run / "adapter_model.safetensors", "a PUT of a run")  # fmt: skip
    assert "not a regular file" in str(error)


def test_serve_skips_a_broken_task_and_says_so(registry, caplog):
    """One broken task made `serve` refuse the whole registry."""
    from starlette.testclient import TestClient

    from adaptformer.serving.app import create_app

    weights = registry.root / "colours" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-50])
    with caplog.at_level("WARNING"):
        catalog = _catalog(registry)
    assert [v.name for v in catalog.list()] == ["probe", "shapes"]
    assert set(catalog.skipped) == {"colours"} and "safetensors" in catalog.skipped["colours"]
    lines = [r.getMessage() for r in caplog.records if "colours" in r.getMessage()]
    assert len(lines) == 1 and "skipping task 'colours'" in lines[0] and "\n" not in lines[0]
    with TestClient(create_app(catalog), base_url="http://localhost") as client:
        health = client.get("/healthz").json()
    assert health["tasks"] == 2 and "colours" in health["skipped"]


def test_parallel_deletes_and_puts_through_the_catalog(registry, task_runs):
    """The issue's probe: concurrent DELETE /v1/tasks/eN all answered 200, yet names stayed in
    registry.json; here DELETEs and PUTs race on one served registry."""
    catalog = _catalog(registry)
    for i in range(8):
        catalog.put(f"e{i}", task_runs["shapes_v2"])
    calls = [lambda i=i: catalog.remove(f"e{i}") for i in range(8)]
    calls += [lambda i=i: catalog.put(f"n{i}", task_runs["probe"]) for i in range(4)]
    _in_threads(calls)
    expected = sorted([*TASKS, *(f"n{i}" for i in range(4))])
    assert registry.names() == expected == [v.name for v in catalog.list()]
    assert all(not t.problem for t in registry.list())


@pytest.mark.parametrize("name", ["alpha", "fresh"])
def test_a_failed_index_write_leaves_the_registry_byte_identical(tmp_path, runs, monkeypatch, name):
    """A full disk while registry.json is written: the old folder (or none) stays."""
    from adaptformer.serving import store
    from adaptformer.utils.errors import UserFacingError

    _, a, b = runs
    reg = af.TaskRegistry(tmp_path / "reg")
    reg.add("alpha", a)
    before = _tree(reg.root)

    def full(path, text):
        raise UserFacingError(f"no space left on device while writing {path}")

    monkeypatch.setattr(store, "atomic_write_text", full)
    with pytest.raises(UserFacingError):
        reg.add(name, b, replace=True)
    with pytest.raises(UserFacingError):
        reg.remove("alpha")
    assert _tree(reg.root) == before
