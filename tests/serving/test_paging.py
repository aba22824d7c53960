"""The residency policy on its own: least-recently-used order, budgets by count and by bytes,
slots in use never chosen, same-shaped slots preferred only among the older idle half."""

from __future__ import annotations

import pytest
import torch

from adaptformer.serving.paging import MIB, Budget, LoadStats, Residency, Slot, tensor_bytes


class Holder:
    """Stands in for a task version: only ``in_use`` matters to the policy."""

    def __init__(self, in_use: int = 0) -> None:
        self.in_use = in_use


def slot(name: str, nbytes: int = 100, shape: str = "a", in_use: int = 0) -> Slot:
    return Slot(name, shape, nbytes, {}, Holder(in_use))


def idle(s: Slot) -> bool:
    return s.holder.in_use == 0


def filled(budget: Budget, *slots: Slot, window: float = 0.0) -> Residency:
    r = Residency(budget, reuse_window=window)
    for s in slots:
        r.add(s)
    return r


def test_the_least_recently_used_idle_slot_goes_first_by_count():
    a, b, c = slot("a"), slot("b"), slot("c")
    r = filled(Budget(max_tasks=3), a, b, c)
    assert r.victims([(100, "a")], idle) == [a]
    r.touch(a)  # a was just used: b is now the oldest
    assert [s.adapter for s in r.slots()] == ["b", "c", "a"]
    assert r.victims([(100, "a")], idle) == [b]
    assert r.victims([(100, "a")] * 2, idle) == [b, c]  # two loads at once: two victims
    assert r.victims([(100, "a")] * 4, idle) is None  # more than the budget can ever hold


def test_nothing_is_evicted_while_there_is_room():
    r = filled(Budget(max_tasks=3), slot("a"))
    assert r.victims([(100, "a")] * 2, idle) == []
    assert filled(Budget(), slot("a"), slot("b")).victims([(10**12, "x")], idle) == []


def test_a_slot_in_use_is_never_chosen_and_no_room_is_none():
    a, b, c = slot("a", in_use=2), slot("b"), slot("c", in_use=1)
    r = filled(Budget(max_tasks=3), a, b, c)
    assert r.victims([(100, "a")], idle) == [b]  # a is older but in use
    b.holder.in_use = 1
    assert r.victims([(100, "a")], idle) is None  # all in use: the caller waits
    a.holder.in_use = 0
    assert r.victims([(100, "a")], idle) == [a]


def test_slots_kept_by_the_caller_are_not_chosen():
    a, b = slot("a"), slot("b")
    r = filled(Budget(max_tasks=2), a, b)
    assert r.victims([(100, "a")], idle, keep={a}) == [b]
    assert r.victims([(100, "a")], idle, keep={a, b}) is None


def test_the_byte_budget_evicts_as_many_as_needed_oldest_first():
    small, big, other = slot("small", 10), slot("big", 60), slot("other", 25)
    r = filled(Budget(max_bytes=100), small, big, other)  # 95 of 100 bytes used
    assert r.victims([(5, "a")], idle) == []
    assert r.victims([(40, "a")], idle) == [small, big]  # 10 is not enough room for 40
    assert r.victims([(101, "a")], idle) is None


def test_both_budgets_must_hold():
    r = filled(Budget(max_tasks=2, max_bytes=100), slot("a", 10), slot("b", 10))
    assert r.victims([(10, "a")], idle) == [r.slots()[0]]  # by count
    r = filled(Budget(max_tasks=5, max_bytes=100), slot("a", 50), slot("b", 40))
    assert len(r.victims([(50, "a")], idle)) == 1  # by bytes


def test_reservations_of_loads_in_flight_count_as_used():
    a = slot("a")
    r = filled(Budget(max_tasks=2), a)
    r.reserve(1, 100)
    assert r.used() == (2, 200)
    assert r.victims([(100, "a")], idle) == [a]
    r.unreserve(1, 100)
    assert r.victims([(100, "a")], idle) == []
    assert r.peak_tasks == 2 and r.peak_bytes == 200


def test_a_same_shaped_slot_is_preferred_only_within_the_older_half():
    olds = [slot(f"o{i}", shape="x") for i in range(3)]
    same = slot("same", shape="y")
    newest = slot("newest", shape="z")
    r = filled(Budget(max_tasks=5), *olds, same, newest, window=0.5)
    # 5 idle slots: the window is the oldest 3, and "same" (4th) lies outside it
    assert r.victims([(100, "y")], idle) == [olds[0]]
    r.touch(olds[0])
    r.touch(olds[1])  # order: o2, same, newest, o0, o1 -> window o2, same, newest
    assert r.victims([(100, "y")], idle) == [same]
    assert r.victims([(100, "z")], idle) == [newest]
    assert r.victims([(100, "q")], idle) == [olds[2]]  # no such shape: plain LRU
    strict = filled(Budget(max_tasks=5), *olds, same, newest, window=0.0)
    assert strict.victims([(100, "y")], idle) == [olds[0]]


def test_budget_validation_and_never_fits():
    with pytest.raises(ValueError, match="negative"):
        Budget(max_tasks=-1)
    b = Budget(max_tasks=4, max_bytes=MIB)
    assert b.bounded and not Budget().bounded
    assert b.describe() == "--max-resident-tasks 4, --adapter-memory 1 MiB"
    assert "names 5 tasks" in b.never_fits(5, 10)
    assert "--adapter-memory 1 MiB" in b.never_fits(2, 2 * MIB)
    assert b.never_fits(4, MIB) == ""


def test_tensor_bytes_counts_the_models_float_size_and_skips_backbone_tensors():
    shapes = {"a": ((3, 4), True), "n": ((), False), "backbone.x": ((100,), True)}
    assert tensor_bytes(shapes, 4) == 12 * 4 + 8
    assert tensor_bytes(shapes, 2) == 12 * 2 + 8
    t = torch.zeros(3, 4)
    assert tensor_bytes({"a": (tuple(t.shape), True)}, t.element_size()) == t.nbytes


def test_load_stats_buckets():
    s = LoadStats()
    s.observe("refill", 0.001)
    s.observe("new", 0.07)
    s.observe("new", 99.0)
    assert s.loads == {"refill": 1, "new": 2} and s.seconds == pytest.approx(99.071)
    assert s.buckets[0] == 1 and s.buckets[-1] == 1 and sum(s.buckets) == 3
