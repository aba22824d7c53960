"""adaptformer.training.first_try: `train` given only the data is sized for a first try, on a CPU
in minutes and on a GPU at the paper's size; what is given explicitly is kept, and `vtab`
keeps the protocol's 224 px and 100 epochs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from adaptformer.training import first_try
from adaptformer.training.config import TrainConfig
from adaptformer.training.first_try import FIRST_TRY, resolve_epochs, resolve_for_device

from ..runs import make_checkpoint, make_image_folder

CPU, GPU = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    ("device", "train_size", "epochs"),
    [
        ("cpu", 180, 10),  # 20 images per class x 10 classes, a tenth for validation: capped
        ("cpu", 1_800, 3),  # Imagenette's 2,000 train images: 5,400 seen
        ("cpu", 12_000, 1),  # a large folder: one epoch, never zero
        ("cpu", 50_000, 1),
        ("cuda", 1_800, 100),  # the paper's 100 epochs for a small data set
        ("cuda", 45_000, 7),
        ("cuda", 1_000_000, 1),
    ],
)
def test_epochs_see_about_the_device_s_budget_of_images(device, train_size, epochs):
    assert FIRST_TRY[device].epochs(train_size) == epochs


def test_a_cpu_run_is_small_and_fp32():
    cfg, filled = resolve_for_device(TrainConfig(), CPU)
    assert (cfg.img_size, cfg.precision) == (112, "fp32")
    assert filled == ["--img-size 112", "--precision fp32"]
    cfg, more = resolve_epochs(cfg, CPU, 1_800)
    assert cfg.epochs == 3 and more == ["--epochs 3"]
    assert cfg.resolved_warmup_epochs == pytest.approx(0.3)  # a tenth of the resolved run


def test_a_gpu_run_is_224_px_in_bf16_where_the_gpu_has_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cfg, _ = resolve_for_device(TrainConfig(), GPU)
    assert (cfg.img_size, cfg.precision) == (224, "bf16")
    assert resolve_epochs(cfg, GPU, 2_000)[0].epochs == 100
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_for_device(TrainConfig(), GPU)[0].precision == "fp32"


def test_given_values_are_kept_and_nothing_is_said():
    given = TrainConfig(img_size=224, epochs=100, precision="bf16")
    cfg, filled = resolve_for_device(given, CPU)
    cfg, more = resolve_epochs(cfg, CPU, 1_800)
    assert (cfg.img_size, cfg.epochs, cfg.precision) == (224, 100, "bf16")
    assert filled == more == []


def test_video_keeps_its_fixed_defaults():
    cfg, _ = resolve_for_device(TrainConfig(dataset="video-list"), CPU)
    cfg, _ = resolve_epochs(cfg, CPU, 50)
    assert (cfg.img_size, cfg.epochs, cfg.precision) == (224, 100, "fp32")


def test_a_warmup_longer_than_the_chosen_run_is_refused_once_it_is_known():
    cfg, _ = resolve_for_device(TrainConfig(warmup_epochs=5), CPU)
    with pytest.raises(ValueError, match="--warmup-epochs 5 is not shorter than the run"):
        resolve_epochs(cfg, CPU, 1_800)


def test_vtab_keeps_the_protocol_s_224_px_and_100_epochs(tmp_path):
    from adaptformer.training.vtab import Protocol

    task = tmp_path / "eurosat"
    task.mkdir()
    for name in ("train800", "val200", "train800val200", "test"):
        (task / f"{name}.txt").write_text("")
    p = Protocol(tmp_path, ("eurosat",), ("linear",), (0,), (1.0,), tmp_path / "out", {})
    cfg = p.config("final", "eurosat", "linear", 0.1, 0)
    assert (cfg.img_size, cfg.epochs, cfg.precision) == (224, 100, "fp32")
    given = Protocol(tmp_path, ("eurosat",), ("linear",), (0,), (1.0,), tmp_path / "out",
                     {"img_size": 112, "epochs": 6})  # fmt: skip
    cfg = given.config("final", "eurosat", "linear", 0.1, 0)
    assert (cfg.img_size, cfg.epochs) == (112, 6)


def test_help_states_what_an_unset_option_becomes():
    from adaptformer.cli import build_parser

    subs = build_parser()._subparsers._group_actions[0].choices
    train = " ".join(subs["train"].format_help().split())
    assert "(default: 112 on a CPU, 224 on a GPU; video: 224)" in train
    assert "about 6,000 training images on a CPU (1 to 10)" in train
    assert "--config paper_image" in train
    vtab = " ".join(subs["vtab"].format_help().split())
    assert "resampled to it (default: 224)" in vtab and "(paper: 100) (default: 100)" in vtab


def test_a_run_given_only_the_data_saves_the_chosen_values(tmp_path, caplog, monkeypatch):
    """End to end on CPU: the log says what was chosen, config.yaml and summary.json hold it
    (a budget of 36 images instead of 6,000, so the tiny run is 2 epochs)."""
    from adaptformer.training.runner import fit

    small = dataclasses.replace(FIRST_TRY["cpu"], train_images=36)
    monkeypatch.setitem(FIRST_TRY, "cpu", small)
    data = make_image_folder(tmp_path / "data", train_per_class=8, test_per_class=2)
    ckpt = make_checkpoint(tmp_path / "vit_tiny.safetensors")
    caplog.set_level("INFO", logger=first_try.__name__)
    cfg = TrainConfig(model="vit_tiny_patch16_224", checkpoint=str(ckpt), dataset="imagefolder",
                      data_root=str(data), workers=0, device="cpu", output=str(tmp_path / "run"),
                      batch_size=4, max_steps_per_epoch=1, val_fraction=0.25)  # fmt: skip
    summary = fit(cfg, progress=False)
    saved = yaml.safe_load(Path(tmp_path / "run" / "config.yaml").read_text())
    assert (saved["img_size"], saved["epochs"], saved["precision"]) == (112, 2, "fp32")
    assert summary["epochs"] == 2
    line = next(r.getMessage() for r in caplog.records if "first try" in r.getMessage())
    assert line.startswith("defaults for a first try on a CPU, 18 training images: ")
    assert "--img-size 112, --precision fp32, --epochs 2" in line
