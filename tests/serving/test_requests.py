"""Request fields are checked values or a 4xx naming the problem."""

from __future__ import annotations

import pytest
from starlette.exceptions import HTTPException

from adaptformer.serving.requests import MAX_TOP_K, parse_top_k, task_names


@pytest.mark.parametrize(("value", "expected"), [(None, 5), ("", 5), ("3", 3), (7, 7)])
def test_top_k_reads_forms_and_json(value, expected):
    assert parse_top_k(value, default=5) == expected


@pytest.mark.parametrize("value", ["0", "-1", "2.5", True, 1.0, MAX_TOP_K + 1, "x"])
def test_bad_top_k_is_a_422_naming_it(value):
    with pytest.raises(HTTPException) as e:
        parse_top_k(value, default=5)
    assert e.value.status_code == 422 and "top_k" in str(e.value.detail)


def test_task_names_from_a_name_a_list_or_commas():
    assert task_names(None) == ["all"]
    assert task_names("a, b,") == ["a", "b"]
    assert task_names(["a"]) == ["a"]
    for bad in (3, [1], " , "):
        with pytest.raises(HTTPException):
            task_names(bad)
