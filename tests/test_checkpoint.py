import os
import random

import numpy as np
import pytest
import torch

import mlhelpers
from mlhelpers.checkpoint import config_differences, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from mlhelpers.models import mlp
from mlhelpers.samplers.regression import SinusoidTasks


def _state(config=None):
    torch.manual_seed(0)
    model = mlp(1, 1, hidden=(8,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 1)).sum().backward()
    optimizer.step()
    sampler = SinusoidTasks(2, 3, seed=5)
    sampler.sample(2)
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": 7,
        "history": {"steps": [1, 2], "train_loss": [0.5, 0.25]},
        "samplers": {"train": sampler.state_dict(), "val": None},
        "rng": rng_state(),
        "config": config if config is not None else {"lr": 1e-3, "hidden": (8,), "name": "sine"},
        "seed": 0,
        "version": mlhelpers.__version__,
    }


def test_round_trip_loads_with_weights_only(tmp_path):
    state = _state()
    path = tmp_path / "run.pt"
    save_checkpoint(path, state)
    # The file must open with the safe loader: only plain types inside.
    raw = torch.load(path, weights_only=True)
    assert raw["step"] == 7 and raw["version"] == mlhelpers.__version__
    loaded = load_checkpoint(path, expected_config={"lr": 1e-3, "hidden": (8,), "name": "sine"})
    for key, value in state["model"].items():
        assert torch.equal(loaded["model"][key], value)
    assert torch.equal(loaded["samplers"]["train"]["generator"], state["samplers"]["train"]["generator"])
    assert loaded["optimizer"]["state"][0]["exp_avg"].equal(state["optimizer"]["state"][0]["exp_avg"])
    assert loaded["history"] == state["history"]


def test_save_leaves_no_temporary_file_and_replaces_old_content(tmp_path):
    path = tmp_path / "sub" / "run.pt"  # the directory is created
    save_checkpoint(path, {"step": 1})
    save_checkpoint(path, {"step": 2})
    assert os.listdir(path.parent) == ["run.pt"]
    assert load_checkpoint(path)["step"] == 2
    assert load_checkpoint(path)["version"] == mlhelpers.__version__  # stamped when absent


def test_failed_save_keeps_old_file_and_removes_temporary(tmp_path, monkeypatch):
    path = tmp_path / "run.pt"
    save_checkpoint(path, {"step": 1})
    before = path.read_bytes()

    def broken_save(obj, file):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["run.pt"]


def test_unpicklable_entry_is_named_before_anything_is_written(tmp_path):
    path = tmp_path / "run.pt"
    with pytest.raises(TypeError, match=r"state\['config'\]\['activation'\]"):
        save_checkpoint(path, {"config": {"activation": torch.nn.ReLU}})
    assert not path.exists()
    assert os.listdir(tmp_path) == []


def test_incompatible_config_names_keys_and_both_values(tmp_path):
    path = tmp_path / "run.pt"
    save_checkpoint(path, _state({"lr": 1e-3, "way": 5, "only_saved": 1}))
    with pytest.raises(ValueError) as error:
        load_checkpoint(path, expected_config={"lr": 1e-2, "way": 5, "only_expected": "x"})
    message = str(error.value)
    assert "'lr': saved 0.001, expected 0.01" in message
    assert "'only_saved': saved 1, expected '<missing>'" in message
    assert "'only_expected': saved '<missing>', expected 'x'" in message
    assert "'way'" not in message


def test_config_differences_compare_kinds_and_numbers():
    assert config_differences({"a": 1, "b": [1, 2]}, {"a": 1.0, "b": [1, 2]}) == {}
    assert config_differences({"a": True}, {"a": 1}) == {"a": (True, 1)}
    assert config_differences({"a": (1, 2)}, {"a": [1, 2]}) == {"a": ((1, 2), [1, 2])}
    assert list(config_differences({"t": torch.ones(2)}, {"t": torch.zeros(2)})) == ["t"]


def test_missing_file_and_other_version(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at path"):
        load_checkpoint(tmp_path / "nope.pt")
    path = tmp_path / "old.pt"
    save_checkpoint(path, {"step": 1, "version": "0.0.1"})
    with pytest.warns(UserWarning, match="mlhelpers 0.0.1"):
        load_checkpoint(path)


def test_rng_state_round_trip_through_a_file_restores_all_generators(tmp_path):
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    state = load_checkpoint(tmp_path / "rng.pt")["rng"]
    first = (torch.rand(3), random.random(), np.random.rand())
    set_rng_state(state)
    second = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(first[0], second[0])
    assert first[1:] == second[1:]


def test_save_through_a_symlink_keeps_the_link_and_the_files_mode(tmp_path):
    """The user's link and permissions survive a save (they used to become a regular 0600 file)."""
    target = tmp_path / "store" / "run.pt"
    save_checkpoint(target, {"step": 1})
    os.chmod(target, 0o640)
    link = tmp_path / "latest.pt"
    link.symlink_to(target)
    save_checkpoint(link, {"step": 2})
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert load_checkpoint(link)["step"] == 2 and load_checkpoint(target)["step"] == 2
    assert target.stat().st_mode & 0o777 == 0o640


def test_a_new_checkpoint_gets_the_umask_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "new.pt", {"step": 1})
    finally:
        os.umask(umask)
    assert (tmp_path / "new.pt").stat().st_mode & 0o777 == 0o644
