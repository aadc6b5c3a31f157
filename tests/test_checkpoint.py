import os
import random
import signal
import time

import numpy as np
import pytest
import torch

import mlhelpers
from mlhelpers.checkpoint import (
    CHECKSUM_KEY,
    CheckpointInUseError,
    CorruptCheckpointError,
    check_writable,
    checkpoint_lock,
    config_differences,
    content_sha256,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
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


# --- damaged files (issue 24, items 6 and 10) -------------------------------------------------


def _damaged_copies(data: bytes) -> dict[str, bytes]:
    """The ways a checkpoint file gets damaged: empty, truncated, garbage, flipped bytes."""
    flipped_one = bytearray(data)
    flipped_one[len(data) // 2] ^= 0x01
    flipped_many = bytearray(data)
    for i in range(100, len(data), max(1, len(data) // 50)):
        flipped_many[i] ^= 0xFF
    return {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "header only": data[:30],
        "garbage": bytes(range(256)) * 8,
        "one flipped byte": bytes(flipped_one),
        "many flipped bytes": bytes(flipped_many),
    }


def test_every_kind_of_damage_raises_one_named_error(tmp_path):
    """Empty, truncated, garbage or bit-flipped files used to raise OSError, EOFError, IndexError or a
    weights_only message, or (one flipped byte in the data) load silently with other numbers."""
    path = tmp_path / "run.pt"
    save_checkpoint(path, _state())
    for kind, data in _damaged_copies(path.read_bytes()).items():
        broken = tmp_path / "broken.pt"
        broken.write_bytes(data)
        with pytest.raises(CorruptCheckpointError, match="broken.pt") as raised:
            load_checkpoint(broken)
        assert isinstance(raised.value, ValueError), kind
        assert "damaged" in str(raised.value) and "delete it" in str(raised.value), kind


def test_every_single_flipped_bit_in_tensor_data_is_detected(tmp_path):
    """A flip inside a tensor's bytes loads without any error from torch: only the checksum sees it."""
    path = tmp_path / "run.pt"
    save_checkpoint(path, {"weights": torch.arange(64, dtype=torch.float32), "step": 3})
    data = path.read_bytes()
    start = data.index(torch.arange(64, dtype=torch.float32).numpy().tobytes())
    for offset in range(0, 256, 17):
        flipped = bytearray(data)
        flipped[start + offset] ^= 0x04
        path.write_bytes(bytes(flipped))
        with pytest.raises(CorruptCheckpointError, match="content sha256"):
            load_checkpoint(path)


def test_every_single_flipped_bit_in_the_checksum_key_name_is_detected(tmp_path):
    """A flip in the key's name used to hide the checksum: the file loaded unchecked."""
    path = tmp_path / "run.pt"
    save_checkpoint(path, {"weights": torch.arange(8, dtype=torch.float32), "step": 3})
    data = path.read_bytes()
    start = data.index(CHECKSUM_KEY.encode())
    for offset in range(len(CHECKSUM_KEY)):
        for bit in (0x01, 0x04, 0x20):
            flipped = bytearray(data)
            flipped[start + offset] ^= bit
            path.write_bytes(bytes(flipped))
            with pytest.raises(CorruptCheckpointError, match="damaged"):
                load_checkpoint(path)


def test_checksum_is_stored_and_removed_on_load_and_old_files_still_load(tmp_path):
    path = tmp_path / "run.pt"
    save_checkpoint(path, {"step": 1})
    raw = torch.load(path, weights_only=True)
    assert raw[CHECKSUM_KEY] == content_sha256({"step": 1, "version": mlhelpers.__version__})
    assert CHECKSUM_KEY not in load_checkpoint(path)
    old = tmp_path / "old.pt"
    torch.save({"step": 5, "version": mlhelpers.__version__}, old)  # written before checksums
    assert load_checkpoint(old)["step"] == 5
    with pytest.raises(ValueError, match="content_sha256"):
        save_checkpoint(path, {CHECKSUM_KEY: "x"})


def test_content_checksum_sees_every_kind_of_change():
    base = {"a": torch.zeros(3), "b": [1, 2.0], "c": {"d": "x"}}
    changed = [
        {"a": torch.zeros(3, dtype=torch.float64), "b": [1, 2.0], "c": {"d": "x"}},
        {"a": torch.zeros(1, 3), "b": [1, 2.0], "c": {"d": "x"}},
        {"a": torch.tensor([0.0, 0.0, 1e-30]), "b": [1, 2.0], "c": {"d": "x"}},
        {"a": torch.zeros(3), "b": (1, 2.0), "c": {"d": "x"}},
        {"a": torch.zeros(3), "b": [1, 2], "c": {"d": "x"}},
        {"a": torch.zeros(3), "b": [1, 2.0], "c": {"e": "x"}},
        {"a": torch.zeros(3), "b": [1, 2.0], "c": {"d": "y"}},
    ]
    digests = {content_sha256(value) for value in [base, *changed]}
    assert len(digests) == 1 + len(changed)
    assert content_sha256(base) == content_sha256({"a": torch.zeros(3), "b": [1, 2.0], "c": {"d": "x"}})


# --- temporary files of killed saves, locks (issue 24, items 9 and 13) ------------------------


def test_temporaries_of_dead_processes_are_removed_on_save_and_load(tmp_path):
    path = tmp_path / "run.pt"
    save_checkpoint(path, {"step": 1})
    dead_pid = _in_child(lambda: None)
    os.waitpid(dead_pid, 0)
    stale = tmp_path / f".run.pt.{dead_pid}.0123456789abcdef.tmp"
    alive = tmp_path / f".run.pt.{os.getppid()}.0123456789abcdef.tmp"  # a save in progress elsewhere
    other = tmp_path / f".other.pt.{dead_pid}.0123456789abcdef.tmp"  # another checkpoint's
    for file in (stale, alive, other):
        file.write_bytes(b"x" * 1000)
    load_checkpoint(path)
    assert not stale.exists() and alive.exists() and other.exists()
    stale.write_bytes(b"x")
    save_checkpoint(path, {"step": 2})
    assert not stale.exists() and alive.exists() and other.exists()


def _in_child(work, *args) -> int:
    """Fork a process (torch already imported: no start-up cost) that runs ``work(*args)`` and exits
    0, or 1 if it raised; return its pid. ``work`` must not compute with tensors: torch's thread pool
    does not survive a fork (a parallel op hangs the child)."""
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            work(*args)
        except BaseException:
            code = 1
        os._exit(code)
    return pid


def _save_forever(path, step: int, weights: torch.Tensor) -> None:
    while True:
        save_checkpoint(path, {"step": step, "weights": weights})


def test_sigkill_during_save_never_damages_the_checkpoint(tmp_path):
    """20 processes killed with SIGKILL at random points of their saves: the file is always a whole
    checkpoint, old or new (its checksum verified), and the next save leaves no temporary file behind."""
    path = tmp_path / "run.pt"
    save_checkpoint(path, {"step": 0, "weights": torch.zeros(400_000)})
    delays = np.random.default_rng(0).uniform(0.005, 0.1, size=20)
    killed_mid_write = 0
    for step, delay in enumerate(delays, start=1):
        pid = _in_child(_save_forever, path, step, torch.full((400_000,), float(step)))
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        killed_mid_write += any(name.endswith(".tmp") for name in os.listdir(tmp_path))
        state = load_checkpoint(path)  # never a CorruptCheckpointError
        assert 0 <= state["step"] <= step
        assert torch.equal(state["weights"], torch.full((400_000,), float(state["step"])))
    assert killed_mid_write >= 5, killed_mid_write  # the kills did land inside saves
    save_checkpoint(path, {"step": 99})
    assert os.listdir(tmp_path) == ["run.pt"]


def _lock_and_wait(path, seconds: float) -> None:
    with checkpoint_lock(path):
        time.sleep(seconds)


def _exit_code(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_checkpoint_lock_refuses_a_second_holder_and_is_released(tmp_path):
    path = tmp_path / "run.pt"
    with checkpoint_lock(path):
        with pytest.raises(CheckpointInUseError, match=f"in use by pid {os.getpid()}"):
            with checkpoint_lock(path):
                pass
        assert _exit_code(_in_child(_lock_and_wait, path, 0)) == 1  # another process is refused too
    assert os.listdir(tmp_path) == []  # released, and the lock file is gone
    assert _exit_code(_in_child(_lock_and_wait, path, 0)) == 0


def test_lock_of_a_killed_process_does_not_block(tmp_path):
    path = tmp_path / "run.pt"
    pid = _in_child(_lock_and_wait, path, 60)
    deadline = time.monotonic() + 10
    while not (tmp_path / ".run.pt.lock").exists() or not (tmp_path / ".run.pt.lock").read_text():
        assert time.monotonic() < deadline, "the child never took the lock"
        time.sleep(0.01)
    with pytest.raises(CheckpointInUseError, match=f"pid {pid}"):
        with checkpoint_lock(path):
            pass
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert (tmp_path / ".run.pt.lock").exists()  # left behind by the killed process
    with checkpoint_lock(path):
        pass


def test_path_that_is_a_directory_or_empty_is_named(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        save_checkpoint(tmp_path, {"step": 1})
    with pytest.raises(ValueError, match="empty path"):
        save_checkpoint("", {"step": 1})
    with pytest.raises(ValueError, match="is a directory"):
        check_writable(tmp_path)
