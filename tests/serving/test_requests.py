"""Request fields are checked values or a 4xx naming the problem."""

from __future__ import annotations

import base64

import pytest
from starlette.exceptions import HTTPException

from adaptformer.serving.images import BadImage, from_base64
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


@pytest.mark.parametrize(
    "value", ["9" * 5000, "²", 10**5000], ids=["5000-digits", "superscript", "huge-int"]
)
def test_huge_or_exotic_top_k_is_a_422_not_a_crash(value):
    with pytest.raises(HTTPException) as e:
        parse_top_k(value, default=5)
    assert e.value.status_code == 422 and "top_k" in str(e.value.detail)
    assert len(str(e.value.detail)) < 200  # names the value without echoing 5,000 digits


def test_base64_as_the_base64_tool_prints_it():
    """Line breaks (``base64`` wraps at 76 columns), missing padding and the URL-safe alphabet
    are accepted; anything else is still refused."""
    data = bytes(range(256)) * 3
    wrapped = base64.encodebytes(data).decode()  # "...\n" every 76 characters
    assert "\n" in wrapped
    assert from_base64(wrapped, "image 0") == data
    assert from_base64(wrapped.replace("\n", "\r\n"), "image 0") == data
    unpadded = base64.b64encode(data[:-1]).decode().rstrip("=")
    assert from_base64(unpadded, "image 0") == data[:-1]
    assert from_base64(base64.urlsafe_b64encode(data).decode(), "image 0") == data
    for bad in ("***", "abcde", "ab=c"):
        with pytest.raises(BadImage, match="image 0 is not valid base64"):
            from_base64(bad, "image 0")
