"""Unreadable images: skipped, counted and logged up front, or a clear error when strict."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from torch.utils.data import DataLoader

from adaptformer.data import DataConfig, UnreadableImageError, build_datasets
from adaptformer.data.safe import check_image, load_image, scan_images

from .synth import FLAT, make_imagefolder, truncate, write_image


@pytest.fixture
def bad_files(tmp_path: Path) -> dict[str, Path]:
    """One readable image and four kinds of unreadable one."""
    good = write_image(tmp_path / "good.jpg", 1, size=(64, 48))
    truncated = truncate(write_image(tmp_path / "truncated.jpg", 2, size=(64, 48)))
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    return {
        "good": good,
        "truncated": truncated,
        "text": text,
        "empty": empty,
        "missing": tmp_path / "missing.jpg",
    }


def test_check_image_finds_every_kind(bad_files: dict[str, Path]) -> None:
    assert check_image(bad_files["good"]) is None
    for kind in ("truncated", "text", "empty", "missing"):
        assert check_image(bad_files[kind]), kind


def test_scan_skips_counts_and_logs(
    bad_files: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    paths = list(bad_files.values())
    ok, skipped = scan_images(paths, what="test images")
    assert ok == [True, False, False, False, False]
    assert skipped == [str(p) for p in paths[1:]]
    assert "skipped 4 of 5 test images" in caplog.text
    for p in paths[1:]:
        assert str(p) in caplog.text


def test_scan_strict_raises_naming_files(bad_files: dict[str, Path]) -> None:
    with pytest.raises(UnreadableImageError, match="4 of 5 images are unreadable") as err:
        scan_images(list(bad_files.values()), strict=True)
    assert str(bad_files["truncated"]) in str(err.value)
    assert "--strict-data" in str(err.value)


def test_load_image_names_the_path(bad_files: dict[str, Path]) -> None:
    assert load_image(bad_files["good"]).mode == "RGB"
    with pytest.raises(UnreadableImageError, match="truncated.jpg"):
        load_image(bad_files["truncated"])


def _corrupt_folder(root: Path) -> list[Path]:
    make_imagefolder(root, n_train=6, n_test=2)
    bad = [truncate(root / "train" / "dog" / "dog_002.jpg"), root / "val" / "cat" / "junk.jpg"]
    bad[1].write_bytes(b"\xff\xd8garbage")
    return bad


def test_dataset_skips_corrupt_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = _corrupt_folder(tmp_path)
    splits = build_datasets(DataConfig(data_root=str(tmp_path), img_size=8), **FLAT)
    assert sorted(splits.skipped) == sorted(str(p) for p in bad)
    assert len(splits.train) + len(splits.val) == 3 * 6 - 1
    assert len(splits.test) == 3 * 2  # 6 good + 1 junk in val/, junk dropped
    assert splits.summary()["skipped"] == 2
    assert "skipped 1 of 18 imagefolder train images" in caplog.text
    for x, _ in DataLoader(splits.train, batch_size=64):
        assert x.shape[1:] == (3, 8, 8)


def test_dataset_strict_raises(tmp_path: Path) -> None:
    _corrupt_folder(tmp_path)
    cfg = DataConfig(data_root=str(tmp_path), img_size=8, strict_data=True)
    with pytest.raises(UnreadableImageError, match="dog_002.jpg"):
        build_datasets(cfg, **FLAT)


def test_file_broken_after_the_scan_is_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_imagefolder(tmp_path, n_train=4, n_test=1)
    splits = build_datasets(DataConfig(data_root=str(tmp_path), img_size=8, val_fraction=0), **FLAT)
    first = Path(splits.train.pool.source.paths[splits.train.indices[0]])
    truncate(first)
    x, y = splits.train[0]
    assert x.shape == (3, 8, 8)
    assert y == splits.train.targets[1]  # the next image of the split stands in
    assert str(first) in caplog.text and "became unreadable" in caplog.text


def test_file_broken_after_the_scan_strict_error_reaches_the_main_process(tmp_path: Path) -> None:
    make_imagefolder(tmp_path, n_train=4, n_test=1)
    cfg = DataConfig(data_root=str(tmp_path), img_size=8, val_fraction=0, strict_data=True)
    splits = build_datasets(cfg, **FLAT)
    first = Path(splits.train.pool.source.paths[splits.train.indices[0]])
    first.unlink()
    batches = iter(DataLoader(splits.train, batch_size=2, num_workers=1))
    try:
        next(batches)
    except UnreadableImageError as err:
        message = str(err)
        # The re-raised exception sits in a reference cycle with its traceback, which holds the
        # loader iterator; break it so the worker is shut down now, not by a later gc pass
        # (that shutdown waits 5 s for a worker whose queues were already collected).
        err.__traceback__ = None
    else:
        pytest.fail("a file deleted after the scan must raise in strict mode")
    del batches
    assert f"{first} became unreadable after the start-up scan" in message
    assert "restore or delete it and rerun" in message


def test_a_lost_mount_stops_the_run(tmp_path: Path) -> None:
    make_imagefolder(tmp_path, n_train=3, n_test=1)
    splits = build_datasets(DataConfig(data_root=str(tmp_path), img_size=8, val_fraction=0), **FLAT)
    for p in splits.train.pool.source.paths:
        Path(p).unlink()
    with pytest.raises(UnreadableImageError, match="still mounted"):
        splits.train[0]


@pytest.mark.parametrize(("mode", "suffix"), [("I;16", "png"), ("I", "tif")])
def test_16_bit_images_are_scaled_not_clipped(tmp_path: Path, mode: str, suffix: str) -> None:
    """A 16-bit PNG came out almost white (mean 254.7): convert() clips at 255."""
    import numpy as np
    from PIL import Image

    values = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    path = tmp_path / f"deep.{suffix}"
    image = Image.fromarray(values)
    (image if mode == "I;16" else image.convert("I")).save(path)
    rgb = np.asarray(load_image(path), dtype=np.float64)
    assert rgb.shape == (64, 64, 3)
    assert abs(rgb.mean() - values.mean() / 257) < 1.0


# -- issue 24: thin images (item 2) and the decoder allow-list (item 17) -------------------------

EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n"
    b"newpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"
)


def thin_png(path: Path, size: tuple[int, int] = (1, 200_000)) -> Path:
    """A few hundred bytes of PNG that a short-side resize would blow up to gigabytes."""
    Image.new("L", size).save(path)
    return path


@pytest.fixture
def no_ghostscript(monkeypatch) -> list[str]:
    """Fail the test if PIL hands anything to Ghostscript (what EPS decoding does)."""
    from PIL import EpsImagePlugin

    called: list[str] = []

    def ghostscript(*args, **kwargs):
        called.append("gs")
        raise AssertionError("Ghostscript was invoked")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    return called


@pytest.fixture
def no_png_decoding(monkeypatch) -> None:
    """Fail the test if a PNG's pixels are decoded: a refusal must come from the header."""
    from PIL import ImageFile

    def load(self):
        raise AssertionError(f"{self.format} pixels decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


@pytest.mark.parametrize("size", [(1, 200_000), (200_000, 1), (30, 1_000)])
def test_thin_images_are_refused_from_the_header(tmp_path, size, no_png_decoding) -> None:
    path = thin_png(tmp_path / "thin.png", size)
    assert path.stat().st_size < 2_000
    with pytest.raises(UnreadableImageError, match="aspect ratio .* at most 20:1") as err:
        load_image(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert "at most 20:1" in check_image(path)


def test_thin_training_images_are_skipped_or_refused_when_strict(tmp_path) -> None:
    ok = write_image(tmp_path / "ok.png", 1, size=(40, 2))  # 20:1 is allowed
    thin = thin_png(tmp_path / "thin.png", (1, 21))
    assert scan_images([ok, thin]) == ([True, False], [str(thin)])
    with pytest.raises(UnreadableImageError, match="at most 20:1"):
        scan_images([ok, thin], strict=True)


def test_eps_is_refused_without_ghostscript(tmp_path, no_ghostscript) -> None:
    path = tmp_path / "drawing.png"  # the name does not matter: the bytes are PostScript
    path.write_bytes(EPS)
    with pytest.raises(UnreadableImageError, match="not a JPEG, PNG, WebP, GIF, BMP or TIFF"):
        load_image(path)
    assert "not a JPEG" in check_image(path)
    assert not no_ghostscript


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_allowed_formats_still_load(tmp_path, fmt) -> None:
    path = tmp_path / f"x.{fmt.lower()}"
    Image.new("RGB", (12, 10), (200, 30, 30)).save(path, format=fmt)
    assert check_image(path) is None
    assert load_image(path).size == (12, 10)


def test_a_fifo_named_as_an_image_is_unreadable_not_a_hang(tmp_path: Path) -> None:
    """Opening a FIFO blocks until someone writes to it: an image file must be a regular file
    (checked before it is opened), in a data folder as on the command line."""
    import os

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    assert "not a regular file (it is a FIFO)" in (check_image(fifo) or "")
    with pytest.raises(UnreadableImageError, match="pipe.jpg is not a regular file"):
        load_image(fifo)
    good = write_image(tmp_path / "good.jpg", 1, size=(16, 16))
    ok, skipped = scan_images([str(good), str(fifo)])
    assert ok == [True, False] and skipped == [str(fifo)]
