"""training/video.py: the video modality hands the training loop the same batches as images."""

from __future__ import annotations

import torch

from adaptformer.training.config import TrainConfig
from adaptformer.training.modality import ImageModality, modality_of
from adaptformer.training.video import VideoModality, _training_batch


def test_the_modality_is_chosen_by_the_dataset():
    assert isinstance(modality_of(TrainConfig(dataset="video-list")), VideoModality)
    assert isinstance(modality_of(TrainConfig(dataset="imagefolder")), ImageModality)
    assert ImageModality().collate() is None


def test_training_batches_are_pairs_without_the_clips_that_failed():
    clip = torch.zeros(3, 2, 4, 4)
    x, y = _training_batch([(clip, 1, 0), None, (clip + 1, 2, 5)])
    assert x.shape == (2, 3, 2, 4, 4) and y.tolist() == [1, 2]
    assert _training_batch([None, None]) is None
    assert VideoModality().collate() is _training_batch
