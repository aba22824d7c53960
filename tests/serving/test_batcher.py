"""The batcher on its own: one mixed pass for rows of many tasks, the two baselines, answers equal
to offline `forward_tasks`, the bounded queue, and stopping answers what is queued."""

from __future__ import annotations

import threading
import time

import pytest
import torch

import adaptformer as af
from adaptformer.serving.batcher import Batcher, BatchStats, Overloaded

from ..helpers import tiny_vit

TASKS = {"a": 3, "b": 5, "c": 4}


@pytest.fixture
def model() -> torch.nn.Module:
    m = tiny_vit(num_classes=0)
    configs = {"a": af.AdapterConfig(bottleneck=8), "b": af.AdapterConfig(method="lora", bottleneck=4),
               "c": af.AdapterConfig(method="linear")}  # fmt: skip
    for name, classes in TASKS.items():
        af.inject(m, configs[name], name=name, num_classes=classes)
        with torch.no_grad():
            for p in af.adapter_parameters(m, name).values():
                p.normal_(0.0, 0.1)
    return m.eval()


def run_rows(batcher: Batcher, rows: list[tuple[torch.Tensor, str]]) -> list[torch.Tensor]:
    """Submit every row at once (so they can share passes) and wait for all answers."""
    batcher.start()
    try:
        futures = batcher.submit(rows)
        return [f.result(timeout=120) for f in futures]
    finally:
        batcher.stop()


@pytest.mark.parametrize(
    ("mode", "passes"),
    [("cross-task", [(6, 3)]), ("per-task", [(2, 1)] * 3), ("off", [(1, 1)] * 6)],
)
def test_modes_answer_like_offline_forward_tasks(model, mode, passes):
    x = torch.randn(6, 3, 32, 32)
    tasks = ["a", "b", "c", "b", "a", "c"]
    stats: list[BatchStats] = []
    batcher = Batcher(model, torch.device("cpu"), max_batch=6, max_wait=600, mode=mode,
                      on_batch=stats.append)  # fmt: skip
    answers = run_rows(batcher, list(zip(x, tasks, strict=True)))
    with torch.inference_mode():
        offline = af.forward_tasks(model, x, tasks).per_sample()
    for got, want, task in zip(answers, offline, tasks, strict=True):
        assert got.shape == (TASKS[task],)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert [(s.size, s.tasks) for s in stats] == passes


def test_a_full_queue_refuses_all_rows_of_a_request(model):
    batcher = Batcher(model, torch.device("cpu"), max_batch=8, max_wait=600, max_queue=3)
    batcher.start()
    x = torch.randn(3, 32, 32)
    first = batcher.submit([(x, "a"), (x, "b")])
    with pytest.raises(Overloaded, match="queue is full") as err:
        batcher.submit([(x, "a"), (x, "c")])  # 2 more do not fit: none is queued
    assert err.value.retry_after >= 1 and batcher.depth() == 2
    batcher.submit([(x, "c")])  # 1 still fits
    stopper = threading.Thread(target=batcher.stop)
    stopper.start()  # stopping runs the queued rows now instead of waiting 600 s
    assert [f.result(timeout=120).shape for f in first] == [(3,), (5,)]
    stopper.join()
    with pytest.raises(Overloaded, match="shutting down"):
        batcher.submit([(x, "a")])


def test_a_failing_pass_answers_its_rows_with_the_error(model):
    batcher = Batcher(model, torch.device("cpu"), max_batch=2, max_wait=0)
    batcher.start()
    bad = batcher.submit([(torch.randn(3, 32, 32), "nope")])[0]
    with pytest.raises(ValueError, match="unknown task"):
        bad.result(timeout=120)
    good = batcher.submit([(torch.randn(3, 32, 32), "a")])[0]  # the thread lives on
    assert good.result(timeout=120).shape == (3,)
    batcher.stop()


def test_settings_are_checked(model):
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(model, torch.device("cpu"), max_batch=0)
    with pytest.raises(ValueError, match="batching mode"):
        Batcher(model, torch.device("cpu"), mode="sometimes")


def test_closed_loop_clients_answered_together_come_back_into_one_pass(model):
    """After a pass of 4 rows, the first row back waits (up to max_wait) for the other 3 clients
    instead of starting a pass of its own (or two cohorts would take turns); a lone client's next
    row runs at once."""
    stats: list[BatchStats] = []
    batcher = Batcher(model, torch.device("cpu"), max_batch=8, max_wait=5.0,
                      on_batch=stats.append, coming=lambda: 0)  # fmt: skip
    x = torch.randn(4, 3, 32, 32)

    def answered(futures) -> None:
        for f in futures:
            f.result(timeout=60)

    batcher.start()
    try:
        answered(batcher.submit([(x[0], "a")]))
        answered(batcher.submit([(x[1], "b")]))  # one row answered, one back: no wait
        answered(batcher.submit([(x[i], "abc"[i % 3]) for i in range(4)]))  # 4 clients at once
        back = batcher.submit([(x[0], "a")])  # the first of the 4 answered clients returns
        time.sleep(0.3)
        back += batcher.submit([(x[i], "b") for i in range(1, 4)])  # ... then the other three
        answered(back)
    finally:
        batcher.stop()  # joins the model thread: every pass has reported its stats
    assert [s.size for s in stats] == [1, 1, 4, 4]  # not [..., 1, 3]
    assert max(stats[1].waited) < 2.0 and max(stats[2].waited) < 2.0
    assert 0.25 < max(stats[3].waited) < 2.0  # waited for the three, not for max_wait


def test_a_cancelled_row_does_not_affect_its_pass(model):
    """A client gone before its pass (its future cancelled) is skipped; the other rows of the
    same pass get their answers, and the bookkeeping still sees every row."""
    done: list = []
    batcher = Batcher(model, torch.device("cpu"), max_batch=3, max_wait=600,
                      on_done=done.extend)  # fmt: skip
    x = torch.randn(3, 3, 32, 32)
    futures = batcher.submit([(x[0], "a"), (x[1], "b"), (x[2], "c")])  # queued before start
    assert futures[1].cancel()
    batcher.start()
    try:
        assert futures[0].result(timeout=60).shape == (3,)
        assert futures[2].result(timeout=60).shape == (4,)
    finally:
        batcher.stop()
    assert futures[1].cancelled() and len(done) == 3 and batcher.failure is None


def test_failing_callbacks_are_logged_and_the_model_thread_lives_on(model, caplog):
    def broken(_) -> None:
        raise RuntimeError("a bug in a callback")

    batcher = Batcher(model, torch.device("cpu"), max_batch=1, max_wait=0, on_batch=broken,
                      on_done=broken)  # fmt: skip
    batcher.start()
    try:
        for _ in range(2):  # the second row is answered too: the thread survived the first
            row = batcher.submit([(torch.randn(3, 32, 32), "a")])[0]
            assert row.result(timeout=60).shape == (3,)
    finally:
        batcher.stop()
    assert batcher.failure is None
    assert "a bug in a callback" in caplog.text


def test_a_dead_model_thread_answers_its_rows_refuses_new_ones_and_is_logged_once(model, caplog):
    def coming() -> int:  # called by the model thread outside any pass: an unexpected bug
        raise RuntimeError("a bug outside the passes")

    batcher = Batcher(model, torch.device("cpu"), max_batch=4, max_wait=600, coming=coming)
    x = torch.randn(3, 32, 32)
    queued = batcher.submit([(x, "a"), (x, "b")])
    batcher.start()
    for f in queued:  # answered, not left hanging
        with pytest.raises(Overloaded, match="model thread stopped.*a bug outside the passes"):
            f.result(timeout=20)
    assert isinstance(batcher.failure, RuntimeError)
    for _ in range(2):
        with pytest.raises(Overloaded, match="model thread stopped"):
            batcher.submit([(x, "a")])
    batcher.stop()
    died = [r for r in caplog.records if "model thread stopped" in r.getMessage()]
    assert len(died) == 1 and died[0].levelname == "CRITICAL" and died[0].exc_info
