"""`adaptformer train/eval --dataset video-list` end to end on the shared real clips."""

from __future__ import annotations

import json

import pytest

from ..runs import make_checkpoint, run_cli


@pytest.fixture
def clips(shared_dir, tmp_path):
    videos = shared_dir / "data" / "videos"
    root = tmp_path / "lists"
    root.mkdir()
    rows = {"train": [("demo.mp4", 0), ("test.avi", 1), ("test.mp4", 0)],
            "val": [("demo.mp4", 0), ("test.avi", 1)],
            "test": [("demo.mp4", 0), ("test.avi", 1), ("test.mp4", 0)]}  # fmt: skip
    for split, items in rows.items():
        (root / f"{split}.csv").write_text("".join(f"{p} {y}\n" for p, y in items))
    return root, videos


def _train_argv(clips, ckpt, *options: str) -> tuple[str, ...]:
    """``train`` of the tiny ViT (inflated) on the shared clips, plus ``options``."""
    lists, videos = clips
    return (
        "train", "--model", "vit_tiny_patch16_224", "--checkpoint", str(ckpt),
        "--dataset", "video-list", "--data-root", str(lists), "--video-root", str(videos),
        "--img-size", "32", "--batch-size", "2", "--workers", "0", *options,
    )  # fmt: skip


@pytest.mark.slow
def test_video_list_trains_and_evaluates_multiview(clips, tmp_path):
    ckpt = make_checkpoint(tmp_path / "vit.safetensors")
    out = tmp_path / "run"
    r = run_cli(*_train_argv(
        clips, ckpt, "--num-frames", "4", "--sampling-rate", "2", "--epochs", "1",
        "--warmup-epochs", "0", "--test-clips", "2", "--test-crops", "3", "--output", str(out),
    ))  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "inflating image backbone" in r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_images"] == 3  # videos, each scored once from 2 x 3 views
    assert summary["data"]["train"] == 3 and summary["data"]["skipped"] == 0
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["val_views_min"] == metrics["val_views_max"] == 6
    # the zero-initialised time embedding trains with the adapters and travels in the task file
    from safetensors.torch import load_file

    assert "backbone.time_embed" in load_file(out / "adapter_model.safetensors")
    r = run_cli("eval", "--run", str(out), "--workers", "0", "--batch-size", "6")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "eval.json").read_text())["test_top1"] == summary["test_top1"]


def test_corrupt_video_is_counted_or_refused_with_strict_data(clips, tmp_path):
    lists, _ = clips
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    with (lists / "train.csv").open("a") as f:
        f.write(f"{bad} 1\n")
    ckpt = make_checkpoint(tmp_path / "vit.safetensors")
    common = _train_argv(
        clips, ckpt, "--num-frames", "2", "--sampling-rate", "1", "--epochs", "1",
        "--warmup-epochs", "0", "--max-steps-per-epoch", "1",
    )  # fmt: skip
    out = tmp_path / "strict"
    r = run_cli(*common, "--strict-data", "--output", str(out))
    assert r.returncode == 2, r.stderr[-3000:]
    assert "broken.mp4" in r.stderr and "--strict-data" in r.stderr
    assert not out.exists() or not any(out.iterdir())
    out = tmp_path / "lenient"
    r = run_cli(*common, "--output", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["data"]["skipped"] == 1


def test_full_fine_tuning_whose_time_embed_cannot_grow_is_warned_about(clips, tmp_path):
    ckpt = make_checkpoint(tmp_path / "vit.safetensors")
    common = _train_argv(
        clips, ckpt, "--num-frames", "4", "--sampling-rate", "2", "--epochs", "4",
        "--method", "full", "--optimizer", "adamw", "--output", str(tmp_path / "run"), "--dry-run",
    )  # fmt: skip
    r = run_cli(*common)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "WARNING" in r.stderr and "time_embed starts at zero" in r.stderr
    assert "--new-params-lr-scale" in r.stderr
    r = run_cli(*common, "--new-params-lr-scale", "100000")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "time_embed starts at zero" not in r.stderr
