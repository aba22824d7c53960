"""A tiny registry of three tasks (AdaptFormer, LoRA, linear probe) on a random ViT-Tiny at 32 px,
with non-zero adapters so each task answers differently; no training, no ../shared."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import adaptformer as af
from adaptformer.adapters.trainable import backbone_fingerprint
from adaptformer.training.modality import data_stats

from ..runs import make_checkpoint

pytest.importorskip("starlette", reason="needs the serve extra: pip install 'adaptformer[serve]'")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx (the dev extra)")

MODEL = "vit_tiny_patch16_224"
IMG = 32
TASKS = {  # name -> (config, classes)
    "shapes": (af.AdapterConfig(bottleneck=8), ["circle", "square", "triangle"]),
    "colours": (af.AdapterConfig(method="lora", bottleneck=4), ["red", "green", "blue", "grey"]),
    "probe": (af.AdapterConfig(method="linear"), ["yes", "no"]),
}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Passes of these tiny models on a shared 2-core machine ran 10x slower with two torch
    threads than with one (1.1 s against 0.1 s for a load, a pass and a delete, measured under
    a load average of 12), so the tests run with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def backbone(ckpt: Path) -> torch.nn.Module:
    return af.create_backbone(MODEL, checkpoint=ckpt, img_size=IMG).eval()


def save_task(
    run: Path, ckpt: Path, config: af.AdapterConfig, classes: list[str], seed: int
) -> Path:
    """A run folder as `adaptformer train` leaves it (adapter files + config.yaml), with random
    non-zero adapter weights drawn from ``seed``."""
    torch.manual_seed(seed)
    model = backbone(ckpt)
    af.inject(model, config, name="t", num_classes=len(classes))
    with torch.no_grad():  # zero-initialised adapters would all answer like the backbone
        for p in af.adapter_parameters(model, "t").values():
            p.normal_(0.0, 0.05)
        for p in af.get_head(model, "t").parameters():  # heads far from uniform answers
            p.normal_(0.0, 0.5)
    meta = {
        "classes": classes,
        "multilabel": False,
        "model": MODEL,
        "img_size": IMG,
        "backbone_sha256": backbone_fingerprint(model),
        **data_stats(model),
    }
    af.save_adapter(model, run, "t", metadata=meta)
    (run / "config.yaml").write_text(f"checkpoint: {ckpt}\n")
    return run


@pytest.fixture(scope="session")
def task_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run folders: one per task of TASKS, plus ``shapes_v2`` (other weights, same classes)."""
    root = tmp_path_factory.mktemp("serve_runs")
    ckpt = make_checkpoint(root / "vit_tiny.safetensors")
    runs = {
        name: save_task(root / name, ckpt, cfg, classes, seed)
        for seed, (name, (cfg, classes)) in enumerate(TASKS.items())
    }
    cfg, classes = TASKS["shapes"]
    runs["shapes_v2"] = save_task(root / "shapes_v2", ckpt, cfg, classes, seed=99)
    return runs


@pytest.fixture
def registry(tmp_path: Path, task_runs: dict[str, Path]) -> af.TaskRegistry:
    """A fresh registry holding the three tasks (each test may change its own copy)."""
    reg = af.TaskRegistry(tmp_path / "registry")
    for name in TASKS:
        reg.add(name, task_runs[name])
    return reg


def png(seed: int = 0, size: tuple[int, int] = (48, 40)) -> bytes:
    """A small real PNG of random pixels."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()
