import pytest
import torch

from mlhelpers import budget, quick_mode, seed_everything, set_quick_mode
from mlhelpers.config import QUICK_ENV_VAR


def test_quick_mode_follows_environment(monkeypatch):
    set_quick_mode(None)
    monkeypatch.setenv(QUICK_ENV_VAR, "1")
    assert quick_mode() and budget(full=1000, quick=10) == 10
    monkeypatch.setenv(QUICK_ENV_VAR, "0")
    assert not quick_mode() and budget(full=1000, quick=10) == 1000
    monkeypatch.setenv(QUICK_ENV_VAR, "maybe")
    with pytest.raises(ValueError, match="MLHELPERS_QUICK='maybe' is not understood"):
        quick_mode()


def test_override_beats_environment(monkeypatch):
    monkeypatch.setenv(QUICK_ENV_VAR, "0")
    set_quick_mode(True)
    try:
        assert quick_mode()
    finally:
        set_quick_mode(None)


def test_seed_everything_repeats_numbers():
    g = seed_everything(5)
    a = (torch.rand(3), torch.rand(3, generator=g))
    g = seed_everything(5)
    b = (torch.rand(3), torch.rand(3, generator=g))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(TypeError, match="seed must be an int"):
        seed_everything("5")
