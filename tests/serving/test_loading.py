"""Loading a task in three steps: files read once (the digest is the loaded bytes'), a new slot
built (only module changes under the model lock), an evicted slot refilled (no lock at all);
each answers exactly like ``load_adapter``."""

from __future__ import annotations

import threading

import pytest
import torch

import adaptformer as af
from adaptformer.adapters.files import adapter_tensors
from adaptformer.adapters.inject import adapter_state
from adaptformer.serving.loading import build_slot, peek_task, read_task, refill, slot_tensors
from adaptformer.serving.store import task_digest

from .conftest import TASKS

CPU = torch.device("cpu")


def images(seed: int = 3) -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def direct(registry: af.TaskRegistry, name: str) -> torch.Tensor:
    """Task ``name``'s logits with the task loaded by ``load_adapter`` into a fresh backbone."""
    model = registry.build_model(names=[name])
    with torch.no_grad():
        return af.forward_tasks(model, images(), [name] * 2).logits


def served(model: torch.nn.Module, adapter: str) -> torch.Tensor:
    with torch.no_grad():
        return af.forward_tasks(model, images(), [adapter] * 2).logits


def build(model, adapter, folder, locks=None):
    model_lock, structure_lock = locks or (threading.RLock(), threading.RLock())
    files = read_task(folder)
    return build_slot(model, adapter, files, CPU, model_lock, structure_lock, str(folder))


def test_read_task_hashes_the_bytes_it_reads_and_peek_reads_no_tensor(registry):
    folder = registry.path("shapes")
    files = read_task(folder)
    assert files.digest == task_digest(folder)
    head = peek_task(folder)
    assert head.shape == files.shape
    assert head.nbytes(4) == files.nbytes(4) == sum(t.nbytes for t in files.tensors.values())


def test_read_task_errors_name_the_task_folder_not_the_private_copy(registry):
    folder = registry.path("colours")
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-50])
    with pytest.raises(ValueError) as err:
        read_task(folder)
    assert str(folder) in str(err.value) and "adaptformer-task-" not in str(err.value)


@pytest.mark.parametrize(
    "config",
    [
        af.AdapterConfig(bottleneck=4),
        af.AdapterConfig(method="houlsby"),
        af.AdapterConfig(method="lora", bottleneck=2),
        af.AdapterConfig(method="vpt", prompt_tokens=2),
        af.AdapterConfig(method="linear"),
    ],
    ids=lambda c: c.method if c.method != "adaptformer" else f"adaptformer-{c.position}",
)
def test_slot_tensors_are_the_task_file_tensors_sharing_the_models_storage(config):
    from ..helpers import tiny_vit

    model = tiny_vit()
    for name in ("a", "b", "c"):
        af.inject(model, config, name=name, num_classes=3)
    ours = slot_tensors(model, "b")
    theirs = {k: t for k, t in adapter_tensors(model, "b").items() if not k.startswith("backbone.")}
    assert sorted(ours) == sorted(theirs)
    assert all(ours[k].data_ptr() == theirs[k].data_ptr() for k in ours)


def test_a_new_slot_and_a_refilled_one_answer_like_load_adapter(registry, task_runs):
    model = registry.build_model(names=[])
    slots = {n: build(model, f"@{n}", registry.path(n)) for n in TASKS}
    for name, slot in slots.items():
        torch.testing.assert_close(served(model, slot.adapter), direct(registry, name))
    # shapes_v2 has the shape of shapes: copied into its slot, it answers as shapes_v2
    registry.add("v2", task_runs["shapes_v2"])
    files = read_task(registry.path("v2"))
    assert files.shape == slots["shapes"].shape
    refill(slots["shapes"], files, "v2")
    torch.testing.assert_close(served(model, "@shapes"), direct(registry, "v2"))


def test_a_refill_takes_no_lock_and_a_mismatch_changes_nothing(registry):
    model = registry.build_model(names=[])
    model_lock = threading.RLock()
    slot = build(model, "@s", registry.path("shapes"), (model_lock, threading.RLock()))
    before = served(model, "@s")
    other = read_task(registry.path("colours"))  # another shape: refused before any copy
    with pytest.raises(ValueError, match="does not fit this model"):
        refill(slot, other, "colours")
    torch.testing.assert_close(served(model, "@s"), before)
    done = threading.Event()
    with model_lock:  # a forward pass in progress
        t = threading.Thread(target=lambda: (refill(slot, read_task(registry.path("shapes")),
                                                    "shapes"), done.set()))  # fmt: skip
        t.start()
        t.join(30)
        assert done.is_set(), "refill waited for the model lock"


def test_a_slot_that_does_not_fit_leaves_the_model_as_it_was(registry, tmp_path):
    from ..helpers import tiny_vit
    from .test_store import save_task

    model = registry.build_model(names=[])
    build(model, "@s", registry.path("shapes"))
    before = set(adapter_state(model).configs)
    narrow = save_task(tiny_vit(), tmp_path / "narrow", "n", af.AdapterConfig(bottleneck=4), 3)
    with pytest.raises(ValueError, match="does not fit this model"):
        build(model, "@n", narrow)
    assert set(adapter_state(model).configs) == before
