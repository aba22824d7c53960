"""Dense and segment sampling: in range, strided, deterministic in evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from adaptformer.data.video.sampling import eval_indices, train_indices, view_grid


def test_dense_training_clips_are_strided_and_in_range() -> None:
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        idx = train_indices(280, 8, "dense", 4, rng)
        assert np.all(np.diff(idx) == 4) and idx[0] >= 0 and idx[-1] <= 279
        starts.add(int(idx[0]))
    assert min(starts) < 20 and max(starts) > 230  # the start covers the whole video


def test_dense_evaluation_spreads_clips_over_the_video() -> None:
    clips = eval_indices(164, 8, "dense", 4, num_clips=4)
    assert [int(c[0]) for c in clips] == [0, 45, 90, 135] and int(clips[-1][-1]) == 163
    assert [int(c[0]) for c in eval_indices(164, 8, "dense", 4, 1)] == [67]  # centred
    np.testing.assert_array_equal(eval_indices(164, 8, "dense", 4, 4)[2], clips[2])


def test_short_videos_repeat_the_last_frame() -> None:
    idx = eval_indices(10, 8, "dense", 4)[0]
    assert idx.tolist() == [0, 4, 8, 9, 9, 9, 9, 9]
    assert train_indices(1, 4, "segment", 1, np.random.default_rng(0)).tolist() == [0, 0, 0, 0]


def test_segment_sampling_takes_one_frame_per_segment() -> None:
    rng = np.random.default_rng(0)
    bounds = np.array([0, 37, 75, 112, 150, 187, 225, 262, 300])  # 300 frames, 8 segments
    for _ in range(50):
        idx = train_indices(300, 8, "segment", 1, rng)
        assert np.all((bounds[:-1] <= idx) & (idx < bounds[1:]))  # frame k in segment k
    assert eval_indices(300, 8, "segment", 1, 1)[0].tolist() == [
        18,
        56,
        93,
        131,
        168,
        206,
        243,
        281,
    ]
    first, second = eval_indices(300, 8, "segment", 1, 2)
    assert np.all(first < second) and np.all(second - first < 37.5)


def test_view_grid_and_errors() -> None:
    assert view_grid(2, 3) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    with pytest.raises(ValueError, match="sampling"):
        eval_indices(10, 4, "random", 1)
    with pytest.raises(ValueError, match="at least one frame"):
        train_indices(0, 4, "dense", 1, np.random.default_rng(0))
