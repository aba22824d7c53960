"""Where images come from (files or arrays) and the torch Dataset views over them.

Every data set is reduced to a :class:`Pool` per official split: a source that loads image
``i`` as PIL, one target per image and one stable identity per image (for seeded selection).
Train and validation are then two :class:`SplitDataset` views of the same training pool with
different transforms, which is why the transform lives in the view, not in the source.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .safe import DECODE_ERRORS, UnreadableImageError, load_image

_log = logging.getLogger(__name__)

# A file that fails at run time is replaced by one of the next few images of the split; if
# that many in a row fail, something larger is wrong (a lost mount) and the run stops.
_MAX_SUBSTITUTES = 16


class ImageSource(Protocol):
    """Random access to the raw images of one split."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> Image.Image:
        """The image at ``index`` as a decoded PIL image (mode RGB or L)."""
        ...

    def describe(self, index: int) -> str:
        """What image ``index`` is, for error messages (a path, or an array position)."""
        ...


class FileSource:
    """Images stored as files; decoded with :func:`load_image`, which names the path on error."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Image.Image:
        return load_image(self.paths[index])

    def describe(self, index: int) -> str:
        return self.paths[index]


class ArraySource:
    """Images held in one uint8 array (CIFAR, SVHN, Fashion-MNIST, MNIST)."""

    def __init__(self, images: np.ndarray, name: str, channels_first: bool = False) -> None:
        """
        Args:
            images: ``N x H x W`` (grey) or ``N x H x W x 3``; ``N x 3 x H x W`` with
                ``channels_first`` (SVHN), transposed per image to avoid copying the whole set.
            name: data set and split, for error messages.
            channels_first: whether the channel axis comes before height and width.
        """
        if images.dtype != np.uint8:
            raise ValueError(f"{name}: images must be uint8, got {images.dtype}")
        self.images = images
        self.name = name
        self.channels_first = channels_first

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> Image.Image:
        arr = self.images[index]
        if self.channels_first:
            arr = arr.transpose(1, 2, 0)
        return Image.fromarray(np.ascontiguousarray(arr))

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}]"


@dataclass
class Pool:
    """One official split before carving: images, targets and identities, index-aligned.

    Attributes:
        source: loads the images.
        targets: ``int64 [N]`` class indices, or ``float32 [N, C]`` multi-hot (multi-label).
        ids: stable identity per image (path below the data root, or array position).
    """

    source: ImageSource
    targets: np.ndarray
    ids: list[str]

    def __post_init__(self) -> None:
        assert len(self.source) == len(self.targets) == len(self.ids), (
            f"pool misaligned: {len(self.source)} images, {len(self.targets)} targets, "
            f"{len(self.ids)} ids"
        )

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, keep: np.ndarray | Sequence[bool]) -> Pool:
        """The pool restricted to the positions where ``keep`` is true (used after scanning)."""
        assert isinstance(self.source, FileSource), "only file pools are scanned and filtered"
        keep = np.asarray(keep, dtype=bool)
        source = FileSource([p for p, k in zip(self.source.paths, keep, strict=True) if k])
        ids = [i for i, k in zip(self.ids, keep, strict=True) if k]
        return Pool(source, self.targets[keep], ids)


class SplitDataset(Dataset):
    """A split (train, val or test): some positions of a pool, seen through one transform.

    Returns ``(image_tensor, target)``: an ``int`` class index, or a ``float32 [C]`` multi-hot
    tensor for multi-label data. Its runtime guard handles a file that passed the start-up scan
    but fails later (deleted, overwritten, a flaky network mount): with ``strict`` it raises
    :class:`UnreadableImageError` naming the file and the fix; otherwise it logs the path and
    returns the next readable image of the split instead, so one bad file cannot stop a
    100-epoch run from a DataLoader worker. (On val/test that scores a neighbour twice; the
    warning names the file, and ``strict_data`` turns it into an error.)
    """

    def __init__(
        self,
        pool: Pool,
        indices: np.ndarray | Sequence[int],
        transform: Callable[[Image.Image], Any],
        name: str,
        strict: bool = False,
    ) -> None:
        """
        Args:
            pool: the split's images, targets and identities.
            indices: positions in ``pool`` that belong to this split.
            transform: PIL image -> tensor (see :mod:`adaptformer.data.transforms`).
            name: e.g. "cifar10 train", for log and error messages.
            strict: raise instead of substituting when an image cannot be read.
        """
        self.pool = pool
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self.name = name
        self.strict = strict

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def targets(self) -> np.ndarray:
        """Targets of this split, in item order (class counts, balanced samplers)."""
        return self.pool.targets[self.indices]

    @property
    def ids(self) -> list[str]:
        """Identities of this split's images, in item order (overlap checks, manifests)."""
        return [self.pool.ids[i] for i in self.indices]

    def _target(self, index: int) -> int | torch.Tensor:
        target = self.pool.targets[index]
        if target.ndim:
            return torch.from_numpy(np.array(target, dtype=np.float32))
        return int(target)

    def __getitem__(self, item: int) -> tuple[Any, int | torch.Tensor]:
        n = len(self.indices)
        for attempt in range(min(_MAX_SUBSTITUTES, n)):
            index = int(self.indices[(item + attempt) % n])
            try:
                img = self.pool.source.load(index)
            except DECODE_ERRORS as err:
                what = self.pool.source.describe(index)
                if self.strict:
                    raise UnreadableImageError(
                        f"{self.name}: {what} became unreadable after the start-up scan "
                        f"({err}); restore or delete it and rerun"
                    ) from err
                _log.warning(
                    "%s: %s became unreadable after the start-up scan (%s); using the next "
                    "image instead",
                    self.name,
                    what,
                    err,
                )
                continue
            return self.transform(img), self._target(index)
        raise UnreadableImageError(
            f"{self.name}: {min(_MAX_SUBSTITUTES, n)} images in a row from position {item} "
            "cannot be read; check that the data set is still mounted and readable"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} images)"
