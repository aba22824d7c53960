"""Multi-view video testing: average the logits of every view of a video, exactly, under DDP.

VideoMAE/AdaptFormer test each video with ``T`` temporal clips x ``S`` spatial crops and average
the logits per video. The reference's distributed test pads each process's share with
duplicates and counts them; here each prediction row carries ``(video_index, view_index)``,
rows from all processes are gathered, duplicates of a ``(video, view)`` pair are dropped, and
only then are views averaged and accuracy counted, so every video counts once whatever the
sampler did. The functions are pure on tensors; :func:`gather_rows` is the one collective, a
no-op without an initialised process group.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..adapters.inject import unwrap
from ..data.metrics import accuracy_from_counts, topk_correct
from ..utils.distributed import all_gather_cat
from .engine import autocast


@dataclass(frozen=True)
class VideoScores:
    """Per-video averaged logits.

    Attributes:
        video_index: ``[M]`` sorted video indices.
        logits: ``[M, K]`` mean logits over each video's distinct views.
        labels: ``[M]`` labels.
        num_views: ``[M]`` how many distinct views each video had.
    """

    video_index: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    num_views: torch.Tensor


def unique_rows(video_index: torch.Tensor, view_index: torch.Tensor) -> torch.Tensor:
    """Positions of the first row of every distinct ``(video, view)`` pair, in row order."""
    if video_index.shape != view_index.shape or video_index.ndim != 1:
        raise ValueError("video_index and view_index must be 1-D tensors of equal length")
    if video_index.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=video_index.device)
    key = video_index.long() * (int(view_index.max()) + 1) + view_index.long()
    uniq, inverse = torch.unique(key, return_inverse=True)
    pos = torch.arange(key.numel(), device=key.device)
    first = torch.full((uniq.numel(),), key.numel(), dtype=torch.long, device=key.device)
    first = first.scatter_reduce(0, inverse, pos, reduce="amin")
    return first.sort().values


def average_views(
    video_index: torch.Tensor,
    view_index: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
) -> VideoScores:
    """Drop duplicate ``(video, view)`` rows, then average logits per video.

    Args:
        video_index: ``[N]`` video of each row.
        view_index: ``[N]`` view (clip-major ``clip * crops + crop``) of each row.
        logits: ``[N, K]`` logits of each row.
        labels: ``[N]`` label of each row's video.
    """
    keep = unique_rows(video_index, view_index)
    vid, logits, labels = video_index[keep].long(), logits[keep].float(), labels[keep].long()
    videos, inverse = torch.unique(vid, return_inverse=True)
    m = videos.numel()
    sums = torch.zeros(m, logits.shape[1], dtype=logits.dtype, device=logits.device)
    sums.index_add_(0, inverse, logits)
    counts = torch.zeros(m, dtype=torch.long, device=logits.device).index_add_(
        0, inverse, torch.ones_like(inverse)
    )
    video_labels = torch.zeros(m, dtype=torch.long, device=logits.device).scatter_(
        0, inverse, labels
    )
    return VideoScores(videos, sums / counts[:, None], video_labels, counts)


def gather_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Concatenate each tensor's rows from all processes (unchanged in a single process)."""
    return tuple(all_gather_cat(t) for t in tensors)


def _views(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    clips, labels, index = batch
    if clips.ndim == 5:  # single-view items [B, C, T, H, W]
        clips = clips.unsqueeze(1)
    if clips.ndim != 6:
        raise ValueError(f"expected clips [B, V, C, T, H, W], got {tuple(clips.shape)}")
    return clips, labels, index


@torch.no_grad()
def predict_views(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    precision: str = "fp32",
    views_per_forward: int | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits of every view this process sees: ``(video_index, view_index, labels, logits)``.

    Batches are ``(clips [B, V, C, T, H, W], labels [B], video_index [B])`` (``V`` may be
    absent) or None (all items failed to decode). The wrapped module runs directly, so a DDP
    wrapper issues no collective per batch.
    """
    net = unwrap(model)
    net.eval()
    vids, views, labs, outs = [], [], [], []
    for batch in tqdm(loader, desc="test", disable=not progress, leave=False):
        if batch is None:
            continue
        clips, labels, index = _views(batch)
        b, v = clips.shape[:2]
        flat = clips.flatten(0, 1)
        step = views_per_forward or flat.shape[0]
        logits = []
        for s in range(0, flat.shape[0], step):
            with autocast(device, precision):
                logits.append(net(flat[s : s + step].to(device, non_blocking=True)).float())
        outs.append(torch.cat(logits))
        vids.append(index.to(device).long().repeat_interleave(v))
        views.append(torch.arange(v, device=device).repeat(b))
        labs.append(labels.to(device).long().repeat_interleave(v))
    if not outs:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty, empty, torch.zeros(0, 0, device=device)
    return torch.cat(vids), torch.cat(views), torch.cat(labs), torch.cat(outs)


def evaluate_multiview(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    expected_videos: Iterable[int] | None = None,
    precision: str = "fp32",
    views_per_forward: int | None = None,
    prefix: str = "test",
    progress: bool = False,
) -> dict[str, float]:
    """Exact multi-view metrics over all processes (the same dict on every rank).

    Args:
        model: the classifier (DDP-wrapped or not).
        loader: this process's batches of evaluation items (see :func:`predict_views`); in
            DDP give each rank a disjoint shard, or any sampler: duplicates are removed.
        device: where the model runs.
        expected_videos: video indices that should be scored (``dataset.video_indices``);
            the ones never seen (failed decoding) are counted as ``{prefix}_missing_videos``.
        precision: ``fp32``, ``bf16`` or ``fp16`` autocast.
        views_per_forward: cap on views per forward pass (memory); None: a whole batch.
        prefix: metric name prefix.
        progress: show a progress bar.

    Returns:
        ``top1``/``top5`` in percent over videos, ``loss`` of the averaged logits, counts of
        videos, missing videos, and views per video (min and max).
    """
    vid, view, lab, logits = predict_views(
        model, loader, device, precision, views_per_forward, progress
    )
    # a process that saw no batch has [0, 0] logits; give it the common width to gather
    width = int(all_gather_cat(torch.tensor([logits.shape[1]], device=device)).max())
    if logits.shape[1] != width:
        logits = logits.new_zeros(0, width)
    scores = average_views(*gather_rows(vid, view, logits, lab))
    return video_metrics(scores, expected_videos, prefix)


def video_metrics(
    scores: VideoScores,
    expected_videos: Iterable[int] | None = None,
    prefix: str = "test",
) -> dict[str, float]:
    """Accuracy and bookkeeping from averaged per-video logits (pure)."""
    n = scores.video_index.numel()
    out: dict[str, float] = {f"{prefix}_videos": n}
    if expected_videos is not None:
        expected = set(int(i) for i in expected_videos)
        out[f"{prefix}_missing_videos"] = len(expected - set(scores.video_index.tolist()))
    if n == 0:
        raise ValueError("no video was scored: every video failed to decode or the loader is empty")
    top1, top5 = accuracy_from_counts(topk_correct(scores.logits, scores.labels, (1, 5)), n)
    out[f"{prefix}_top1"], out[f"{prefix}_top5"] = top1, top5
    out[f"{prefix}_loss"] = F.cross_entropy(scores.logits, scores.labels).item()
    out[f"{prefix}_views_min"] = int(scores.num_views.min())
    out[f"{prefix}_views_max"] = int(scores.num_views.max())
    return out
