"""adaptformer.training.runner: which epoch a run keeps."""

from __future__ import annotations

import pytest

from adaptformer.training.runner import improves

NONE = {"score": None, "loss": None, "epoch": None, "state": None}
OLD = {"score": 40.0, "epoch": 0, "state": None}


def best(score, loss):
    return {"score": score, "loss": loss, "epoch": 0, "state": None}


@pytest.mark.parametrize(
    ("score", "loss", "current", "expected"),
    [
        (10.0, 2.0, NONE, True),  # the first epoch always counts
        (41.0, 9.0, best(40.0, 1.0), True),  # higher top-1 wins whatever the loss
        (39.0, 0.1, best(40.0, 1.0), False),  # lower top-1 loses whatever the loss
        (40.0, 0.9, best(40.0, 1.0), True),  # tie: lower validation loss wins
        (40.0, 1.1, best(40.0, 1.0), False),  # tie: higher loss keeps the earlier epoch
        (40.0, 1.0, best(40.0, 1.0), False),  # exact tie keeps the earlier epoch
        (40.0, 1.0, OLD, True),  # a checkpoint written before "loss" was kept
        (None, None, best(40.0, 1.0), True),  # no validation split: the last epoch
    ],
)
def test_improves(score, loss, current, expected):
    assert improves(score, loss, current) is expected
