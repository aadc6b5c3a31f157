"""Chapter 3's recipe for the five gradient learners: what it builds, that its runs are
reproducible, and that the committed runs are the ones its code makes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mlhelpers.data.omniglot import load_omniglot
from mlhelpers.gradient_recipe import (
    GRADIENT_LEARNERS,
    INNER_LR,
    load_gradient_learners,
    make_gradient_learner,
    retrain_gap,
    train_gradient_learner,
)
from mlhelpers.learners import ANIL, MAML, MetaSGD, Reptile

STORED = Path(__file__).resolve().parent.parent / "notebooks" / "results" / "gradient_learners_omniglot.pt"


@pytest.fixture(scope="module")
def omniglot():
    return load_omniglot()


def test_builds_each_learner_with_the_chapters_settings():
    built = {name: make_gradient_learner(name, 5) for name in GRADIENT_LEARNERS}
    assert type(built["MAML"]) is MAML and not built["MAML"].first_order
    assert type(built["FOMAML"]) is MAML and built["FOMAML"].first_order
    assert isinstance(built["Reptile"], Reptile) and built["Reptile"].inner_steps == 3
    assert isinstance(built["Meta-SGD"], MetaSGD) and isinstance(built["ANIL"], ANIL)
    assert all(learner.inner_steps == 1 for name, learner in built.items() if name != "Reptile")
    assert all(learner.eval_inner_steps == 3 for learner in built.values())
    meta_sgd_steps = torch.cat([p.flatten() for n, p in built["Meta-SGD"].named_parameters() if "lr" in n])
    assert meta_sgd_steps.numel() > 0 and torch.allclose(meta_sgd_steps, torch.full_like(meta_sgd_steps, INNER_LR))
    assert make_gradient_learner("MAML", 20).model(torch.zeros(2, 1, 28, 28)).shape == (2, 20)
    assert make_gradient_learner("Reptile", 5, inner_steps=5, use_query=True).use_query
    own = make_gradient_learner("Reptile", 5, inner_optimizer="adam", inner_batch_size=5, eval_inner_steps=86)
    assert (own.inner_optimizer, own.inner_batch_size, own.eval_inner_steps) == ("adam", 5, 86)
    for option in (dict(inner_optimizer="adam"), dict(inner_batch_size=5)):
        with pytest.raises(ValueError, match=f"{next(iter(option))} is for Reptile only"):
            make_gradient_learner("FOMAML", 5, **option)


def test_training_is_reproducible_and_seeded_per_learner(omniglot):
    runs = [train_gradient_learner(omniglot, name, 5, steps=2, progress=False) for name in ("MAML", "MAML", "FOMAML")]
    (first, h1, _), (second, h2, _), (_, h3, _) = runs
    assert h1.train_loss == h2.train_loss
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert h3.train_loss[0] != h1.train_loss[0], "each learner starts from its own seed"


def test_loads_what_the_script_stores(omniglot, tmp_path):
    learner, history, seconds = train_gradient_learner(omniglot, "ANIL", 5, steps=2, progress=False)
    path = tmp_path / "runs.pt"  # the layout of scripts/train_gradient_learners.py
    torch.save({"command": "test", "steps": {5: 2}, "state_dicts": {"5-way ANIL": learner.state_dict()},
                "histories": {"5-way ANIL": history.to_dict()}, "train_seconds": {"5-way ANIL": seconds}}, path)
    learners, histories, train_seconds, stored = load_gradient_learners(path)
    loaded = learners[5, "ANIL"]
    assert isinstance(loaded, ANIL) and stored["steps"] == {5: 2} and train_seconds[5, "ANIL"] == seconds
    assert histories[5, "ANIL"].train_loss == history.train_loss
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(loaded.model(x), learner.model(x))


def test_retrain_gap_is_zero_for_the_recipes_runs_and_sees_a_changed_one(omniglot):
    _, history, _ = train_gradient_learner(omniglot, "FOMAML", 5, steps=3, progress=False)
    assert retrain_gap(omniglot, {(5, "FOMAML"): history}, steps=2, progress=False) == 0.0
    history.train_loss[1] += 0.25  # a run this code does not make
    assert retrain_gap(omniglot, {(5, "FOMAML"): history}, steps=2, progress=False) == pytest.approx(0.25)
    assert retrain_gap(omniglot, {(5, "FOMAML"): history}, steps=1, progress=False) == 0.0
    with pytest.raises(ValueError, match="only 3 steps"):
        retrain_gap(omniglot, {(5, "FOMAML"): history}, steps=4, progress=False)


@pytest.mark.skipif(not STORED.exists(), reason="the committed runs are in the repository, not the package")
def test_committed_runs_start_as_the_recipe_trains(omniglot):
    """The first meta-step of each stored 5-way run, retrained, gives the stored training loss."""
    _, histories, _, stored = load_gradient_learners(STORED)
    assert stored["steps"] == {5: 1500, 20: 600}
    assert {key for key in histories} == {(n, name) for n in (5, 20) for name in GRADIENT_LEARNERS}
    assert retrain_gap(omniglot, {key: histories[key] for key in ((5, "MAML"), (5, "Reptile"))}, steps=1,
                       progress=False) < 1e-4
