"""Rebuild ``mlhelpers/data/assets/omniglot_small.npz`` from the two Omniglot "minimal" zips.

    python scripts/build_omniglot.py [--small1 ZIP] [--small2 ZIP] [--out NPZ]

Reads ``images_background_small1.zip`` and ``images_background_small2.zip`` (by default from
``../shared/data/omniglot`` beside the repository), keeps Greek and Latin once (they are in both
zips; their files must be identical), applies :func:`mlhelpers.data.omniglot.preprocess` to every
image and writes, in a fixed order (classes sorted by (alphabet, character), drawers 1..20):

    images          uint8  [4840, 28, 28]  round(255 * preprocessed ink)
    labels          int64  [4840]          class id 0..241
    drawers         int8   [4840]          drawer 1..20
    class_alphabet  int64  [242]           alphabet id per class
    alphabets       str    [8]             alphabet names, sorted
    characters      str    [242]           class names such as 'Greek/character01'

The npz is written with fixed zip timestamps, so on one machine the file is byte-for-byte
reproducible; the checksum the package verifies (``OMNIGLOT_SHA256``) is of the array contents
(:func:`mlhelpers.data.omniglot.arrays_sha256`), which do not depend on the zlib version. The
script prints both sha256s. After changing ``preprocess``, paste the new content sha256 into
``OMNIGLOT_SHA256`` and ``mlhelpers/data/assets/README.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mlhelpers.data.omniglot import IMAGE_SIZE, arrays_sha256, preprocess

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "omniglot"
DEFAULT_ZIPS = (DATA / "images_background_small1.zip", DATA / "images_background_small2.zip")
DEFAULT_OUT = REPO / "mlhelpers" / "data" / "assets" / "omniglot_small.npz"

DRAWERS = 20
_PNG = re.compile(r"^[^/]+/(?P<alphabet>[^/]+)/(?P<character>character\d+)/\d+_(?P<drawer>\d+)\.png$")
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def read_zips(zips: Sequence[Path]) -> dict[tuple[str, str, int], bytes]:
    """(alphabet, character, drawer) -> PNG bytes from all ``zips``; duplicates must be identical."""
    found: dict[tuple[str, str, int], bytes] = {}
    for path in zips:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if name.endswith("/"):
                    continue
                match = _PNG.match(name)
                if match is None:
                    raise ValueError(
                        f"{path}: unexpected member {name!r} (expected */ALPHABET/characterNN/IIII_DD.png)"
                    )
                key = (match["alphabet"], match["character"], int(match["drawer"]))
                data = archive.read(name)
                if key in found and found[key] != data:
                    raise ValueError(
                        f"{path}: {name!r} differs from the file of the same name in another zip"
                    )
                found[key] = data
    return found


def build_arrays(pngs: Mapping[tuple[str, str, int], bytes]) -> dict[str, np.ndarray]:
    """The arrays of the shipped file from (alphabet, character, drawer) -> PNG bytes."""
    classes = sorted({(alphabet, character) for alphabet, character, _ in pngs})
    alphabets = sorted({alphabet for alphabet, _ in classes})
    images = np.empty((len(classes) * DRAWERS, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), DRAWERS)
    drawers = np.tile(np.arange(1, DRAWERS + 1, dtype=np.int8), len(classes))
    for label, (alphabet, character) in enumerate(classes):
        for drawer in range(1, DRAWERS + 1):
            key = (alphabet, character, drawer)
            if key not in pngs:
                raise ValueError(f"{alphabet}/{character} has no image of drawer {drawer}")
            with Image.open(io.BytesIO(pngs[key])) as image:
                ink = preprocess(image)[0].numpy()
            images[label * DRAWERS + drawer - 1] = np.round(ink * 255.0).astype(np.uint8)
    if len(pngs) != len(images):
        raise ValueError(f"{len(pngs)} images for {len(classes)} characters x {DRAWERS} drawers")
    return {
        "images": images,
        "labels": labels,
        "drawers": drawers,
        "class_alphabet": np.array([alphabets.index(a) for a, _ in classes], dtype=np.int64),
        "alphabets": np.array(alphabets),
        "characters": np.array([f"{a}/{c}" for a, c in classes]),
    }


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed`` but with fixed member order and timestamps (reproducible bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with archive.open(info, "w") as member:
                np.lib.format.write_array(member, np.ascontiguousarray(arrays[key]), allow_pickle=False)


def build(zips: Sequence[Path] = DEFAULT_ZIPS, out: Path = DEFAULT_OUT) -> str:
    """Build the shipped file from ``zips`` into ``out``; returns the content sha256."""
    arrays = build_arrays(read_zips(zips))
    write_npz(Path(out), arrays)
    return arrays_sha256(arrays)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small1", type=Path, default=DEFAULT_ZIPS[0], help="images_background_small1.zip")
    parser.add_argument("--small2", type=Path, default=DEFAULT_ZIPS[1], help="images_background_small2.zip")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the npz to write")
    args = parser.parse_args(argv)
    content = build((args.small1, args.small2), args.out)
    file_sha = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")
    print(f"content sha256 (OMNIGLOT_SHA256): {content}")
    print(f"file sha256:                      {file_sha}")
    return content


if __name__ == "__main__":
    main()
