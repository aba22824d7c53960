"""Multi-view testing: per-video averages, exact with duplicated rows and under real DDP."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from adaptformer.backbones.video import VideoVisionTransformer
from adaptformer.data.video.datasets import build_video_datasets, collate_videos
from adaptformer.training.video_eval import average_views, evaluate_multiview, video_metrics


def test_duplicate_rows_are_counted_once() -> None:
    video = torch.tensor([4, 4, 2, 4, 2, 4, 2])
    view = torch.tensor([0, 1, 0, 0, 1, 1, 1])  # rows 3, 5 and 6 repeat (video, view) pairs
    logits = torch.tensor([[1.0, 0], [3, 0], [0, 2], [9, 9], [0, 4], [9, 9], [9, 9]])
    labels = torch.tensor([0, 0, 1, 0, 1, 0, 1])
    scores = average_views(video, view, logits, labels)
    assert scores.video_index.tolist() == [2, 4]
    torch.testing.assert_close(scores.logits, torch.tensor([[0.0, 3.0], [2.0, 0.0]]))
    assert scores.num_views.tolist() == [2, 2] and scores.labels.tolist() == [1, 0]
    metrics = video_metrics(scores, expected_videos=[2, 4, 7])
    assert metrics["test_videos"] == 2 and metrics["test_missing_videos"] == 1
    assert metrics["test_top1"] == 100.0


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return VideoVisionTransformer(
        img_size=32, patch_size=16, num_frames=4, embed_dim=32, depth=1, num_heads=2, num_classes=3
    ).eval()


def test_multiview_on_real_clips_averages_the_views(tmp_path, videos_dir) -> None:
    for split in ("train", "test"):
        (tmp_path / f"{split}.csv").write_text("demo.mp4 0\ntest.avi 1\ntest.mp4 2\n")
    test = build_video_datasets(
        tmp_path, video_root=videos_dir, num_frames=4, size=32, test_clips=2, test_crops=3
    ).test
    model = tiny_model()
    loader = DataLoader(test, batch_size=2, collate_fn=collate_videos)
    metrics = evaluate_multiview(model, loader, torch.device("cpu"), test.video_indices)
    assert metrics["test_videos"] == 3 and metrics["test_missing_videos"] == 0
    assert metrics["test_views_min"] == metrics["test_views_max"] == 6
    with torch.no_grad():
        means = torch.stack([model(test[i][0]).mean(0) for i in range(3)])
    expected = 100.0 * (means.argmax(1) == torch.arange(3)).float().mean().item()
    assert metrics["test_top1"] == pytest.approx(expected)
    expected_loss = nn.functional.cross_entropy(means, torch.arange(3)).item()
    assert metrics["test_loss"] == pytest.approx(expected_loss, rel=1e-5)


class RandomViews(Dataset):
    """5 videos x 2 views of random clips, deterministic per index."""

    def __len__(self) -> int:
        return 5

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        return torch.randn(2, 3, 4, 32, 32, generator=g), i % 3, 10 + i


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        data = RandomViews()
        # DistributedSampler pads 5 videos to 6 by repeating one: it must not count twice
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False)
        loader = DataLoader(data, batch_size=2, sampler=sampler)
        metrics = evaluate_multiview(tiny_model(), loader, torch.device("cpu"), range(10, 15))
        torch.save(metrics, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_evaluation_equals_single_process(tmp_path) -> None:
    single = evaluate_multiview(
        tiny_model(), DataLoader(RandomViews(), batch_size=3), torch.device("cpu"), range(10, 15)
    )
    out = str(tmp_path / "metrics")
    mp.spawn(_ddp_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    for rank in range(2):
        ddp = torch.load(f"{out}.{rank}")
        assert ddp["test_videos"] == 5 and ddp["test_missing_videos"] == 0
        assert ddp["test_top1"] == single["test_top1"]
        assert ddp["test_loss"] == pytest.approx(single["test_loss"], rel=1e-6)
