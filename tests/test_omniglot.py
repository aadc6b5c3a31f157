"""The shipped Omniglot file, its preprocessing, its build script and the full-set loader."""

from __future__ import annotations

import importlib.resources
import importlib.util
import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mlhelpers.data import omniglot
from mlhelpers.data.omniglot import (
    OMNIGLOT_SHA256,
    OMNIGLOT_SPLITS,
    arrays_sha256,
    load_full_omniglot,
    load_omniglot,
    omniglot_drawers,
    preprocess,
    preprocess_many,
)
from mlhelpers.samplers.episodic import EpisodicSampler

REPO = Path(__file__).resolve().parents[1]
ZIP_DIR = REPO.parent / "shared" / "data" / "omniglot"
ZIPS = (ZIP_DIR / "images_background_small1.zip", ZIP_DIR / "images_background_small2.zip")
needs_zips = pytest.mark.skipif(not all(z.is_file() for z in ZIPS), reason=f"Omniglot zips not in {ZIP_DIR}")

QUANTISATION = 0.5 / 255 + 1e-6  # the shipped file rounds to 8 bits
ALPHABET_SIZES = {
    "Balinese": 24,
    "Early_Aramaic": 22,
    "Greek": 24,
    "Japanese_(katakana)": 47,
    "Korean": 40,
    "Latin": 26,
    "Sanskrit": 42,
    "Tagalog": 17,
}


def shipped_path() -> Path:
    return Path(str(importlib.resources.files("mlhelpers.data").joinpath("assets/omniglot_small.npz")))


def read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


@pytest.fixture
def fresh_cache():
    """Clear the load cache before and after, so a monkeypatched file never leaks into other tests."""
    omniglot._load_raw.cache_clear()
    yield
    omniglot._load_raw.cache_clear()


# ---------------------------------------------------------------- the shipped file


def test_shipped_file_is_package_data_and_small():
    path = shipped_path()
    assert path.is_file()
    assert path.stat().st_size <= 3 * 1024 * 1024
    for name in ("LICENSE-omniglot.txt", "README.md"):
        assert (path.parent / name).is_file()
    assert OMNIGLOT_SHA256 in (path.parent / "README.md").read_text()


def test_checksum_of_shipped_contents_matches_constant():
    assert arrays_sha256(read_npz(shipped_path())) == OMNIGLOT_SHA256


def test_checksum_depends_on_every_array_and_name():
    arrays = {"a": np.arange(4, dtype=np.int64), "b": np.zeros(3, dtype=np.uint8)}
    base = arrays_sha256(arrays)
    assert arrays_sha256(dict(arrays)) == base
    assert arrays_sha256({**arrays, "b": np.array([0, 0, 1], dtype=np.uint8)}) != base
    assert arrays_sha256({**arrays, "a": arrays["a"].astype(np.int32)}) != base
    assert arrays_sha256({**arrays, "a": arrays["a"].reshape(2, 2)}) != base
    assert arrays_sha256({"a": arrays["a"], "c": arrays["b"]}) != base


def test_tampered_copy_is_rejected(tmp_path, monkeypatch, fresh_cache):
    arrays = read_npz(shipped_path())
    arrays["images"] = arrays["images"].copy()
    arrays["images"][100, 14, 14] ^= 1  # one pixel off by 1/255
    tampered = tmp_path / "omniglot_small.npz"
    np.savez_compressed(tampered, **arrays)
    monkeypatch.setattr(omniglot, "_asset_file", lambda: tampered)
    with pytest.raises(ValueError, match="corrupted.*scripts/build_omniglot.py"):
        load_omniglot()


def test_truncated_copy_is_rejected(tmp_path, monkeypatch, fresh_cache):
    broken = tmp_path / "omniglot_small.npz"
    broken.write_bytes(shipped_path().read_bytes()[:-5000])
    monkeypatch.setattr(omniglot, "_asset_file", lambda: broken)
    with pytest.raises(ValueError, match="corrupted.*scripts/build_omniglot.py"):
        load_omniglot()


def test_untampered_copy_loads_through_the_same_path(tmp_path, monkeypatch, fresh_cache):
    copy = tmp_path / "omniglot_small.npz"
    shutil.copyfile(shipped_path(), copy)
    monkeypatch.setattr(omniglot, "_asset_file", lambda: copy)
    assert len(load_omniglot().images) == 4840


def test_sizes_shapes_dtypes_and_range():
    data = load_omniglot()
    assert data.images.shape == (4840, 1, 28, 28)
    assert data.images.dtype == torch.float32
    assert float(data.images.min()) == 0.0 and float(data.images.max()) == 1.0
    assert data.labels.shape == (4840,) and data.labels.dtype == torch.int64
    assert data.num_classes == 242
    assert torch.equal(data.counts(), torch.full((242,), 20))
    assert data.group_names == sorted(ALPHABET_SIZES)
    per_alphabet = torch.bincount(data.class_groups, minlength=8).tolist()
    assert dict(zip(data.group_names, per_alphabet)) == ALPHABET_SIZES
    assert data.class_names[0] == "Balinese/character01"
    assert "Greek/character01" in data.class_names
    assert data.class_names == sorted(data.class_names)
    for name, group in zip(data.class_names, data.class_groups.tolist()):
        assert name.split("/")[0] == data.group_names[group]
    # Ink is the minority: the mean intensity of a character image is small but not zero.
    assert 0.02 < float(data.images.mean()) < 0.3


def test_drawers_are_1_to_20_within_each_class():
    drawers = omniglot_drawers()
    assert drawers.shape == (4840,) and drawers.dtype == torch.int64
    assert torch.equal(drawers, torch.arange(1, 21).repeat(242))


def test_splits_by_alphabet_disjoint_and_covering():
    data = load_omniglot()
    assert set(data.splits) == {"train", "val", "test"}
    sizes = {name: len(classes) for name, classes in data.splits.items()}
    assert sizes == {"train": 130, "val": 46, "test": 66}
    everything = torch.cat(list(data.splits.values()))
    assert sorted(everything.tolist()) == list(range(242))
    assert OMNIGLOT_SPLITS == {
        "train": ("Japanese_(katakana)", "Korean", "Latin", "Tagalog"),
        "val": ("Early_Aramaic", "Greek"),
        "test": ("Balinese", "Sanskrit"),
    }
    for split, alphabets in OMNIGLOT_SPLITS.items():
        found = {data.class_names[c].split("/")[0] for c in data.splits[split].tolist()}
        assert found == set(alphabets)
        if split != "train":
            assert min(ALPHABET_SIZES[a] for a in alphabets) >= 20


def test_no_splits_when_asked():
    assert load_omniglot(split_by_alphabet=False).splits == {}
    with pytest.raises(TypeError, match="split_by_alphabet"):
        load_omniglot(split_by_alphabet="yes")


def test_caller_cannot_change_the_cache():
    first = load_omniglot()
    first.images.zero_()
    first.labels.zero_()
    first.class_groups.zero_()
    first.splits["train"].zero_()
    first.class_names[0] = "changed"
    second = load_omniglot()
    assert float(second.images.max()) == 1.0
    assert int(second.labels.max()) == 241
    assert int(second.class_groups.max()) == 7
    assert second.class_names[0] == "Balinese/character01"
    assert len(set(second.splits["train"].tolist())) == 130


def test_within_alphabet_20_way_episodes_on_val_and_test():
    data = load_omniglot()
    for split in ("val", "test"):
        sampler = EpisodicSampler(data, n_way=20, k_shot=1, q_query=1, split=split, within_group=True, seed=0)
        task = sampler.sample(4)
        assert task.support_x.shape == (4, 20, 1, 28, 28)
        for classes in task.info["classes"]:
            assert len(set(data.class_groups[classes].tolist())) == 1


# ---------------------------------------------------------------- preprocess


def raw_stroke() -> tuple[Image.Image, np.ndarray]:
    """A synthetic raw image: a 1-bit PIL picture (ink black) and its ink array (ink = 1)."""
    picture = Image.new("1", (105, 105), 1)
    ImageDraw.Draw(picture).line([(10, 20), (90, 80), (30, 95)], fill=0, width=3)
    ink = (np.asarray(picture.convert("L")) == 0).astype(np.uint8)
    return picture, ink


def test_preprocess_output_shape_range_and_ink_is_bright():
    picture, ink = raw_stroke()
    out = preprocess(picture)
    assert out.shape == (1, 28, 28) and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert float(out[0, 0, 27]) == 0.0  # far from the stroke: background is 0
    # Area average (PIL BOX weighs whole source pixels, so only approximately): total ink is kept
    # up to the scale factor (105/28)^2, and full ink stays exactly 1.
    assert float(out.sum()) == pytest.approx(ink.sum() / (105 / 28) ** 2, rel=0.05)
    assert torch.equal(preprocess(np.ones((105, 105), dtype=np.uint8)), torch.ones(1, 28, 28))


def test_preprocess_pil_array_bool_float_and_tensor_agree():
    picture, ink = raw_stroke()
    expected = preprocess(picture)
    for same in (ink, ink.astype(bool), ink.astype(np.float32), ink.astype(np.int64), torch.from_numpy(ink)):
        assert torch.equal(preprocess(same), expected)
    assert not torch.equal(preprocess(1 - ink), expected)


def test_preprocess_is_deterministic_and_batched():
    picture, ink = raw_stroke()
    batch = preprocess_many([picture, ink, np.zeros((105, 105), dtype=np.uint8)])
    assert batch.shape == (3, 1, 28, 28)
    assert torch.equal(batch[0], preprocess(picture)) and torch.equal(batch[1], preprocess(picture))
    assert float(batch[2].abs().max()) == 0.0
    assert preprocess_many([]).shape == (0, 1, 28, 28)
    assert preprocess_many(np.stack([ink, ink])).shape == (2, 1, 28, 28)


@needs_zips
@pytest.mark.parametrize(
    "member, zip_index",
    [
        ("images_background_small1/Balinese/character01/0108_01.png", 0),
        ("images_background_small1/Korean/character40/0682_06.png", 0),
        ("images_background_small2/Japanese_(katakana)/character13/0608_06.png", 1),
        ("images_background_small2/Greek/character24/0417_06.png", 1),
        ("images_background_small2/Tagalog/character17/0909_20.png", 1),
    ],
)
def test_preprocess_matches_the_shipped_images(member, zip_index):
    data = load_omniglot()
    with zipfile.ZipFile(ZIPS[zip_index]) as archive:
        png = archive.read(member)
    _, alphabet, character, filename = member.split("/")
    index = data.class_names.index(f"{alphabet}/{character}") * 20 + int(filename[-6:-4]) - 1
    assert int(data.labels[index]) == data.class_names.index(f"{alphabet}/{character}")
    with Image.open(io.BytesIO(png)) as picture:
        from_pil = preprocess(picture)
        ink = (np.asarray(picture.convert("L")) == 0).astype(np.uint8)
    assert torch.equal(preprocess(ink), from_pil)
    torch.testing.assert_close(from_pil, data.images[index], atol=QUANTISATION, rtol=0.0)
    # ... and not merely close to any Omniglot image: the neighbour (next drawer) is far.
    other = index + 1 if index % 20 < 19 else index - 1
    assert float((from_pil - data.images[other]).abs().max()) > 0.1


@pytest.mark.parametrize(
    "bad, error, fragment",
    [
        ("a.png", TypeError, "got str"),
        ([[0, 1], [1, 0]], TypeError, "got list"),
        (np.zeros((28, 28), dtype=np.uint8), ValueError, r"shape \(105, 105\), got .* shape \(28, 28\)"),
        (np.zeros((1, 105, 105), dtype=np.uint8), ValueError, r"got an array of shape \(1, 105, 105\)"),
        (np.full((105, 105), 255, dtype=np.uint8), ValueError, r"values must be in \{0, 1\}.*255"),
        (np.full((105, 105), np.nan, dtype=np.float32), ValueError, "finite.*NaN"),
        (np.full((105, 105), 2.0), ValueError, r"\[0, 1\].*\[2, 2\]"),
        (np.zeros((105, 105), dtype=np.complex64), TypeError, "dtype.*complex64"),
        (Image.new("L", (28, 28), 255), ValueError, "105 x 105.*28 x 28"),
    ],
)
def test_preprocess_rejects_bad_input(bad, error, fragment):
    with pytest.raises(error, match=f"^image .*{fragment}"):
        preprocess(bad)


def test_preprocess_many_names_the_bad_item():
    _, ink = raw_stroke()
    with pytest.raises(ValueError, match=r"^images\[1\] .*values must be in"):
        preprocess_many([ink, ink * 3])
    with pytest.raises(TypeError, match="^images must be an iterable"):
        preprocess_many(Image.new("L", (105, 105)))


# ---------------------------------------------------------------- the build script


def load_build_script():
    spec = importlib.util.spec_from_file_location("build_omniglot", REPO / "scripts" / "build_omniglot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_script_defaults_point_beside_the_repo():
    script = load_build_script()
    assert script.DEFAULT_ZIPS == ZIPS
    assert script.DEFAULT_OUT == shipped_path()


@needs_zips
def test_build_script_reproduces_the_shipped_file(tmp_path, capsys):
    script = load_build_script()
    out = tmp_path / "rebuilt.npz"
    assert script.main(["--out", str(out)]) == OMNIGLOT_SHA256
    assert OMNIGLOT_SHA256 in capsys.readouterr().out
    rebuilt, shipped = read_npz(out), read_npz(shipped_path())
    assert sorted(rebuilt) == sorted(shipped)
    for key in shipped:
        assert rebuilt[key].dtype == shipped[key].dtype, key
        np.testing.assert_array_equal(rebuilt[key], shipped[key], err_msg=key)
    with zipfile.ZipFile(out) as archive:  # fixed timestamps: same bytes on every run
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_build_script_rejects_conflicting_duplicates(tmp_path):
    script = load_build_script()
    _, ink = raw_stroke()
    pngs = []
    for value in (0, 255):
        buffer = io.BytesIO()
        Image.new("L", (105, 105), value).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    for i, png in enumerate(pngs):
        with zipfile.ZipFile(tmp_path / f"z{i}.zip", "w") as archive:
            archive.writestr(f"set{i}/Greek/character01/0001_01.png", png)
    with pytest.raises(ValueError, match="differs"):
        script.read_zips([tmp_path / "z0.zip", tmp_path / "z1.zip"])
    assert len(script.read_zips([tmp_path / "z0.zip", tmp_path / "z0.zip"])) == 1


# ---------------------------------------------------------------- the full set from a folder


def make_fake_torchvision_folder(root: Path, background: bool = True) -> dict[str, np.ndarray]:
    """root/omniglot-py/images_background/ALPHABET/characterNN/IIII_DD.png with tiny 1-bit PNGs."""
    folder = root / "omniglot-py" / ("images_background" if background else "images_evaluation")
    layout = {"Zeta_script": 2, "Alpha_script": 3}  # written unsorted on purpose
    rng = np.random.default_rng(0)
    written = {}
    for alphabet, n_characters in layout.items():
        for c in range(1, n_characters + 1):
            character = folder / alphabet / f"character{c:02d}"
            character.mkdir(parents=True)
            for drawer in (2, 1):
                ink = np.zeros((105, 105), dtype=np.uint8)
                top, left = rng.integers(0, 80, size=2)
                ink[top : top + 20, left : left + 5] = 1
                Image.fromarray(ink == 0).convert("1").save(character / f"{c:04d}_{drawer:02d}.png")
                written[f"{alphabet}/character{c:02d}/{drawer}"] = ink
    (folder / "Alpha_script" / "notes.txt").write_text("not a character folder")
    return written


def test_full_loader_reads_a_fake_folder_offline(tmp_path, no_network):
    written = make_fake_torchvision_folder(tmp_path)
    data = load_full_omniglot(tmp_path)
    assert data.group_names == ["Alpha_script", "Zeta_script"]
    assert data.class_names == [
        "Alpha_script/character01",
        "Alpha_script/character02",
        "Alpha_script/character03",
        "Zeta_script/character01",
        "Zeta_script/character02",
    ]
    assert data.class_groups.tolist() == [0, 0, 0, 1, 1]
    assert data.images.shape == (10, 1, 28, 28) and data.images.dtype == torch.float32
    assert data.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    # Image order within a class is by file name, i.e. drawer 1 then drawer 2.
    for index, name in enumerate(data.class_names):
        for position, drawer in enumerate((1, 2)):
            expected = preprocess(written[f"{name}/{drawer}"])
            torch.testing.assert_close(data.images[2 * index + position], expected, atol=1e-6, rtol=0.0)
    assert data.splits == {}


def test_full_loader_reads_the_evaluation_folder(tmp_path, no_network):
    make_fake_torchvision_folder(tmp_path, background=False)
    assert load_full_omniglot(tmp_path, background=False).num_classes == 5
    with pytest.raises(FileNotFoundError, match="background set not found"):
        load_full_omniglot(tmp_path, background=True)


def test_full_loader_refuses_to_download_by_default(tmp_path, monkeypatch, no_network):
    import torchvision.datasets

    def forbidden(*args, **kwargs):
        raise AssertionError("torchvision.datasets.Omniglot must not be called without download=True")

    monkeypatch.setattr(torchvision.datasets, "Omniglot", forbidden)
    with pytest.raises(FileNotFoundError, match="pass download=True"):
        load_full_omniglot(tmp_path)
    with pytest.raises(TypeError, match="^download must be a bool, got str"):
        load_full_omniglot(tmp_path, download="no")
    assert not (tmp_path / "omniglot-py").exists()


def test_full_loader_downloads_through_torchvision_only_when_asked(tmp_path, monkeypatch, no_network):
    import torchvision.datasets

    calls = []

    def fake_omniglot(root, background=True, download=False, **kwargs):
        calls.append((root, background, download))
        make_fake_torchvision_folder(Path(root), background=background)

    monkeypatch.setattr(torchvision.datasets, "Omniglot", fake_omniglot)
    data = load_full_omniglot(tmp_path, background=False, download=True)
    assert calls == [(str(tmp_path), False, True)]
    assert data.num_classes == 5


def test_full_loader_rejects_an_empty_folder_and_bad_root(tmp_path, no_network):
    (tmp_path / "omniglot-py" / "images_background" / "Alphabet" / "character01").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images found"):
        load_full_omniglot(tmp_path)
    with pytest.raises(TypeError, match="^root must be a str or path, got int"):
        load_full_omniglot(3)
