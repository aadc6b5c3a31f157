"""Omniglot, shipped offline: 8 alphabets, 242 characters, 20 drawers each (4,840 images). Chapter 1.

The shipped file ``data/assets/omniglot_small.npz`` is the union of the two "minimal background"
sets of Lake et al. (2015), every image already through :func:`preprocess` and quantised to 8 bits.
:func:`load_omniglot` splits it *by alphabet* (:data:`OMNIGLOT_SPLITS`, 130 / 46 / 66 characters),
so every validation and test alphabet has the 20 characters of a within-alphabet 20-way task. The
file is checked on first load against :data:`OMNIGLOT_SHA256`, a hash of the array contents
(:func:`arrays_sha256`), so a file rebuilt by ``scripts/build_omniglot.py`` with another zlib
still verifies. :func:`load_full_omniglot` reads the full background or evaluation set.

Data: MIT licence, copyright (c) 2015 Brenden Lake (``data/assets/LICENSE-omniglot.txt``). Cite:
Lake, B. M., Salakhutdinov, R., and Tenenbaum, J. B. (2015). Human-level concept learning through
probabilistic program induction. Science, 350(6266), 1332-1338.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Mapping
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mlhelpers.data.labelled import LabelledDataset
from mlhelpers.validation import check_bool

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = [
    "OMNIGLOT_SHA256",
    "OMNIGLOT_SPLITS",
    "RAW_SIZE",
    "IMAGE_SIZE",
    "IMAGE_SHAPE",
    "preprocess",
    "preprocess_many",
    "load_omniglot",
    "omniglot_drawers",
    "load_full_omniglot",
    "arrays_sha256",
]

RAW_SIZE = 105
"""Side of a raw Omniglot image, in pixels."""

IMAGE_SIZE = 28
"""Side of a preprocessed image, in pixels: :func:`preprocess` returns ``[1, 28, 28]``."""

IMAGE_SHAPE = (1, IMAGE_SIZE, IMAGE_SIZE)
"""``(channels, height, width)`` of a preprocessed image: what Omniglot models take."""

OMNIGLOT_SHA256 = "458f0511653889349a5bedcf51a79ae2481188a85de477b8b396dc1deb2a7745"
"""sha256 of the shipped arrays' contents (see :func:`arrays_sha256`), checked on load."""

OMNIGLOT_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("Japanese_(katakana)", "Korean", "Latin", "Tagalog"),
    "val": ("Early_Aramaic", "Greek"),
    "test": ("Balinese", "Sanskrit"),
}
"""Alphabets of each split of :func:`load_omniglot` (130 / 46 / 66 characters)."""

_ASSET = "assets/omniglot_small.npz"
_ARRAY_KEYS = ("alphabets", "characters", "class_alphabet", "drawers", "images", "labels")
_REBUILD = "reinstall the package or rebuild it with scripts/build_omniglot.py"


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------


def _ink(image: Any, name: str) -> np.ndarray:
    """``[105, 105]`` float32 ink intensity in [0, 1] of one raw image; errors name ``name``."""
    expected_shape = f"({RAW_SIZE}, {RAW_SIZE})"
    if isinstance(image, Image.Image):
        if image.size != (RAW_SIZE, RAW_SIZE):
            raise ValueError(
                f"{name} must be a {RAW_SIZE} x {RAW_SIZE} image (a raw Omniglot PNG), got a PIL "
                f"image of size {image.size[0]} x {image.size[1]}; resize your drawing to "
                f"{RAW_SIZE} x {RAW_SIZE} first"
            )
        grey = np.asarray(image.convert("L"), dtype=np.float32)
        return (255.0 - grey) / 255.0  # ink is dark in a picture, 1 in the model input
    if isinstance(image, Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"{name} must be a PIL image, a numpy array or a torch tensor of shape {expected_shape}, "
            f"got {type(image).__name__}"
        )
    if image.shape != (RAW_SIZE, RAW_SIZE):
        raise ValueError(f"{name} must have shape {expected_shape}, got an array of shape {image.shape}")
    if image.dtype == np.bool_:
        return image.astype(np.float32)
    if np.issubdtype(image.dtype, np.integer):
        values = np.unique(image)
        if not np.isin(values, (0, 1)).all():
            shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
            raise ValueError(
                f"{name} is an integer array, so its values must be in {{0, 1}} (ink = 1, "
                f"background = 0), got values {{{shown}}}; for an 8-bit picture with dark ink "
                f"pass a PIL image instead"
            )
        return image.astype(np.float32)
    if np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all():
            raise ValueError(f"{name} must be finite, got {int((~np.isfinite(image)).sum())} NaN/inf values")
        low, high = float(image.min()), float(image.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"{name} is a float array, so its values must be ink intensities in [0, 1], "
                f"got values in [{low:g}, {high:g}]"
            )
        return image.astype(np.float32)
    raise TypeError(f"{name} must have a bool, integer or float dtype, got {image.dtype}")


def _downsample(ink: np.ndarray) -> Tensor:
    """``[1, 28, 28]`` float32 area average of a ``[105, 105]`` ink array."""
    small = Image.fromarray(np.ascontiguousarray(ink, dtype=np.float32)).resize(
        (IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX
    )
    out = np.clip(np.asarray(small, dtype=np.float32), 0.0, 1.0)
    return torch.from_numpy(out.copy()).unsqueeze(0)


def preprocess(image: Image.Image | np.ndarray | Tensor) -> Tensor:
    """One raw Omniglot image -> the model input ``[1, 28, 28]`` float32 in [0, 1], ink = 1.

    The shipped file was built with it, so your own drawing passed through it looks like the training
    data. ``image`` is ``105 x 105``: a PIL image with dark ink on light (as read from an Omniglot
    PNG), or a ``[105, 105]`` array or tensor of ink (bool, integers in {0, 1}, or floats in [0, 1]).
    The ink is downsampled with an area average (PIL ``BOX``). A TypeError or ValueError names a bad
    type, shape or value.
    """
    return _downsample(_ink(image, "image"))


def preprocess_many(images: Iterable[Image.Image | np.ndarray | Tensor]) -> Tensor:
    """:func:`preprocess` each of ``images``: ``[N, 1, 28, 28]`` float32 (``N`` may be 0).

    A ``[N, 105, 105]`` array or tensor is read as ``N`` images. Errors name ``images[i]``.
    """
    if isinstance(images, (Image.Image, str, bytes)) or not isinstance(images, Iterable):
        raise TypeError(
            f"images must be an iterable of raw images (PIL images or [105, 105] arrays), "
            f"got {type(images).__name__}"
        )
    out = [_downsample(_ink(image, f"images[{i}]")) for i, image in enumerate(images)]
    if not out:
        return torch.empty(0, *IMAGE_SHAPE)
    return torch.stack(out)


# --------------------------------------------------------------------------------------------
# The shipped file
# --------------------------------------------------------------------------------------------


def arrays_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 of the contents of named arrays: names in sorted order, each with dtype, shape, bytes.

    Independent of how the arrays were stored (zip timestamps, compression level, zlib version).
    """
    digest = hashlib.sha256()
    for key in sorted(arrays):
        array = np.ascontiguousarray(arrays[key])
        header = f"{key}|{array.dtype.str}|{','.join(map(str, array.shape))}|"
        digest.update(header.encode("utf-8"))
        digest.update(array.tobytes())
    return digest.hexdigest()


def _asset_file() -> Traversable:
    """The shipped ``omniglot_small.npz`` (tests point this elsewhere)."""
    return files("mlhelpers.data").joinpath(_ASSET)


def _read_verified(data: bytes, where: str) -> dict[str, np.ndarray]:
    """The arrays of an npz given as bytes, after checking their contents against the checksum."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except Exception as error:  # a truncated or scrambled zip fails in many ways
        raise ValueError(
            f"Omniglot file {where} could not be read ({error}): file corrupted, {_REBUILD}"
        ) from error
    if sorted(arrays) != sorted(_ARRAY_KEYS):
        raise ValueError(
            f"Omniglot file {where} holds arrays {sorted(arrays)}, expected {sorted(_ARRAY_KEYS)}: "
            f"file corrupted, {_REBUILD}"
        )
    found = arrays_sha256(arrays)
    if found != OMNIGLOT_SHA256:
        raise ValueError(
            f"Omniglot file {where} has content sha256 {found}, expected {OMNIGLOT_SHA256}: "
            f"file corrupted, {_REBUILD}"
        )
    for array in arrays.values():
        array.setflags(write=False)  # cached: nobody may write into them
    return arrays


@lru_cache(maxsize=1)
def _load_raw() -> dict[str, np.ndarray]:
    """The verified, read-only arrays of the shipped file, read once per process."""
    asset = _asset_file()
    try:
        data = asset.read_bytes()
    except FileNotFoundError as error:
        raise FileNotFoundError(f"the shipped Omniglot file {asset} is missing: {_REBUILD}") from error
    return _read_verified(data, str(asset))


def _class_names(raw: Mapping[str, np.ndarray]) -> list[str]:
    return [str(name) for name in raw["characters"]]


def load_omniglot(split_by_alphabet: bool = True) -> LabelledDataset:
    """The shipped Omniglot as a :class:`LabelledDataset`, with the splits of :data:`OMNIGLOT_SPLITS`
    (``split_by_alphabet=False``: no splits).

    ``images`` ``[4840, 1, 28, 28]`` float32 (ink = 1), ``labels`` ``[4840]`` (20 images per class in
    drawer order, :func:`omniglot_drawers`), ``class_names`` such as ``'Greek/character01'``,
    ``class_groups`` ``[242]`` alphabet ids and ``group_names`` the 8 alphabets (sorted). The file is
    read and verified once per process (a ValueError if corrupted); every call returns fresh tensors.
    """
    check_bool("split_by_alphabet", split_by_alphabet)
    raw = _load_raw()
    images = torch.tensor(raw["images"], dtype=torch.float32).unsqueeze(1) / 255.0
    labels = torch.tensor(raw["labels"], dtype=torch.int64)
    class_groups = torch.tensor(raw["class_alphabet"], dtype=torch.int64)
    group_names = [str(name) for name in raw["alphabets"]]
    splits: dict[str, Tensor] = {}
    if split_by_alphabet:
        assigned = sorted(a for alphabets in OMNIGLOT_SPLITS.values() for a in alphabets)
        if assigned != sorted(group_names):
            raise RuntimeError(
                f"OMNIGLOT_SPLITS names alphabets {assigned}, the file holds {sorted(group_names)}"
            )
        for split, alphabets in OMNIGLOT_SPLITS.items():
            ids = torch.tensor([group_names.index(a) for a in alphabets])
            splits[split] = torch.nonzero(torch.isin(class_groups, ids)).flatten()
    return LabelledDataset(
        images=images,
        labels=labels,
        class_names=_class_names(raw),
        class_groups=class_groups,
        group_names=group_names,
        splits=splits,
    )


def omniglot_drawers() -> Tensor:
    """``[4840]`` int64 drawer id (1..20) of each image of :func:`load_omniglot`, same order."""
    return torch.tensor(_load_raw()["drawers"], dtype=torch.int64)


# --------------------------------------------------------------------------------------------
# The full data set, from a torchvision folder
# --------------------------------------------------------------------------------------------


def _full_folder(root: Path, background: bool) -> Path:
    # The layout of torchvision.datasets.Omniglot: root/omniglot-py/images_background/ALPHABET/...
    return root / "omniglot-py" / ("images_background" if background else "images_evaluation")


def load_full_omniglot(
    root: str | os.PathLike[str], background: bool = True, download: bool = False
) -> LabelledDataset:
    """The full Omniglot background (964 characters) or evaluation (659) set, preprocessed.

    Reads the folder torchvision's ``Omniglot`` extracts, ``root/omniglot-py/images_background/
    ALPHABET/characterNN/*.png`` (``images_evaluation`` for ``background=False``), through
    :func:`preprocess`. With ``download=True`` torchvision fetches it first; the folder is walked here
    because torchvision's constructor insists on the zip even when the folder is complete. Returns a
    :class:`LabelledDataset` without splits, classes sorted by (alphabet, character). A
    FileNotFoundError if the folder is missing (and ``download`` is False) or holds no images.
    """
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a str or path, got {type(root).__name__} {root!r}")
    check_bool("background", background)
    check_bool("download", download)
    root = Path(root)
    folder = _full_folder(root, background)
    if download:
        from torchvision.datasets import Omniglot

        Omniglot(str(root), background=background, download=True)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Omniglot {'background' if background else 'evaluation'} set not found at {folder}; "
            f"pass download=True to fetch it with torchvision.datasets.Omniglot (needs internet), "
            f"or use load_omniglot() for the copy shipped with the package"
        )
    alphabets = sorted(p.name for p in folder.iterdir() if p.is_dir())
    class_names: list[str] = []
    class_groups: list[int] = []
    images: list[Tensor] = []
    labels: list[int] = []
    for group, alphabet in enumerate(alphabets):
        for character in sorted(p.name for p in (folder / alphabet).iterdir() if p.is_dir()):
            pngs = sorted(p for p in (folder / alphabet / character).iterdir() if p.suffix == ".png")
            if not pngs:
                continue
            label = len(class_names)
            class_names.append(f"{alphabet}/{character}")
            class_groups.append(group)
            for png in pngs:
                with Image.open(png) as image:
                    images.append(_downsample(_ink(image, str(png))))
                labels.append(label)
    if not images:
        raise FileNotFoundError(f"no images found under {folder} (expected ALPHABET/characterNN/*.png)")
    return LabelledDataset(
        images=torch.stack(images),
        labels=torch.tensor(labels, dtype=torch.int64),
        class_names=class_names,
        class_groups=torch.tensor(class_groups, dtype=torch.int64),
        group_names=alphabets,
    )
