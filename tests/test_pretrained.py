"""The learner shipped with the package: mlhelpers.pretrained, and the recipe that made it (Chapter 4)."""

import hashlib
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlhelpers import pretrained, recipe
from mlhelpers.checkpoint import CorruptCheckpointError
from mlhelpers.data.omniglot import load_omniglot
from mlhelpers.evaluation import evaluate
from mlhelpers.learners import EnsembleProtoNet, ProtoNet
from mlhelpers.models import conv4
from mlhelpers.samplers.episodic import EpisodicSampler
from mlhelpers.seeding import seed_everything

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def learner():
    return pretrained.load()


@pytest.fixture(scope="module")
def episodes():
    return EpisodicSampler(load_omniglot(), 5, 1, 3, "test", seed=0).sample(20)


@pytest.mark.parametrize("name", sorted(pretrained.PRETRAINED))
def test_every_shipped_learner_loads_offline_in_eval_mode(name, no_network):
    learner = pretrained.load(name)
    assert isinstance(learner, EnsembleProtoNet) and not learner.training
    assert len(learner.backbones) == learner.config["members"]
    assert str(pretrained.PRETRAINED[name].file) in pretrained.PRETRAINED[name].command


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="protonet-omniglot"):
        pretrained.load("resnet-imagenet")


@pytest.mark.slow
def test_shipped_learner_is_accurate_on_meta_test_alphabets(learner, episodes):
    predicted = learner.predict_labels(episodes.support_x, episodes.support_y, episodes.query_x)
    assert predicted.shape == episodes.query_y.shape and predicted.dtype == torch.int64
    accuracy = (predicted == episodes.query_y).float().mean().item()
    assert accuracy > 0.85, accuracy  # chance is 0.2


def test_predictions_keep_the_callers_labels_and_accept_uint8(learner, episodes):
    sx, sy, qx = episodes.support_x[0], episodes.support_y[0], episodes.query_x[0]
    expected = learner.predict_labels(sx, sy, qx)
    names = torch.tensor([7, 42, 3, 100, 5])  # any integers name the classes
    renamed = learner.predict_labels(sx, names[sy], qx)
    torch.testing.assert_close(renamed, names[expected])
    assert set(renamed.tolist()) <= set(names.tolist())
    as_bytes = learner.predict_labels((sx * 255).round().to(torch.uint8), sy, (qx * 255).round().to(torch.uint8))
    assert (as_bytes == expected).float().mean() >= 0.9


@pytest.mark.parametrize("scale", [lambda x: 255 * x, lambda x: 2 * x - 1], ids=["0..255 floats", "[-1, 1]"])
def test_float_images_outside_the_unit_range_are_refused(learner, episodes, scale):
    """Such images used to be accepted and quietly cost accuracy."""
    sx, sy, qx = episodes.support_x[0], episodes.support_y[0], episodes.query_x[0]
    with pytest.raises(ValueError, match=r"support_images must be float in \[0, 1\]"):
        learner.predict_labels(scale(sx), sy, qx)
    with pytest.raises(ValueError, match=r"query_images must be float in \[0, 1\]"):
        learner.predict_labels(sx, sy, scale(qx))


def test_predictions_invariant_to_support_order_and_any_shots(learner):
    task = EpisodicSampler(load_omniglot(), 7, 3, 2, "test", seed=1).sample(1)
    sx, sy, qx = task.support_x[0], task.support_y[0], task.query_x[0]
    perm = torch.randperm(len(sy), generator=torch.Generator().manual_seed(0))
    a = learner.predict_labels(sx, sy, qx)
    b = learner.predict_labels(sx[perm], sy[perm], qx)
    torch.testing.assert_close(a, b)
    assert a.shape == (14,)
    # the task dimension gives the same answer as one call per task
    torch.testing.assert_close(learner.predict_labels(task.support_x, task.support_y, task.query_x)[0], a)


@pytest.mark.parametrize(
    "support, labels, query, error, message",
    [
        (torch.rand(5, 28, 28), torch.arange(5), torch.rand(2, 1, 28, 28), ValueError, "shape"),
        (torch.rand(5, 1, 28, 28), torch.arange(4), torch.rand(2, 1, 28, 28), ValueError, "one label per"),
        (torch.rand(5, 1, 28, 28), torch.arange(5.0), torch.rand(2, 1, 28, 28), TypeError, "integers"),
        (torch.rand(5, 1, 28, 28), torch.arange(5), torch.rand(1, 2, 1, 28, 28), ValueError, "task dimension"),
        (torch.rand(5, 1, 28, 28).int(), torch.arange(5), torch.rand(2, 1, 28, 28), TypeError, "uint8"),
        ([[0.0]], torch.arange(5), torch.rand(2, 1, 28, 28), TypeError, r"torch\.Tensor"),
    ],
)
def test_bad_input_is_explained(learner, support, labels, query, error, message):
    with pytest.raises(error, match=message):
        learner.predict_labels(support, labels, query)


def test_one_member_without_tta_is_a_protonet():
    torch.manual_seed(0)
    backbone = conv4(hidden_channels=8).eval()
    task = EpisodicSampler(load_omniglot(), 4, 2, 2, "val", seed=2).sample(2)
    ensemble = EnsembleProtoNet([backbone]).eval()
    with torch.no_grad():
        expected = ProtoNet(backbone)(task).log_softmax(-1)
        torch.testing.assert_close(ensemble(task), expected, atol=1e-5, rtol=1e-5)
        assert ensemble(task).shape == (2, 8, 4)
        ensemble.tta_shift = 1  # test-time views change the embedding, not the shapes
        assert ensemble(task).shape == (2, 8, 4) and not torch.allclose(ensemble(task), expected)


def test_save_and_load_file_round_trip(tmp_path):
    torch.manual_seed(0)
    config = {"channels": 8, "members": 2, "tta_shift": 1, "steps": 0}
    learner = pretrained.build(config).eval()
    pretrained.save(learner, tmp_path / "x.pt", config)
    loaded = pretrained.load_file(tmp_path / "x.pt")
    assert loaded.config == config and loaded.tta_shift == 1 and len(loaded.backbones) == 2
    task = EpisodicSampler(load_omniglot(), 3, 1, 2, "val", seed=3).sample(1)
    with torch.no_grad():  # float16 storage: close, not equal
        torch.testing.assert_close(loaded(task), learner(task), atol=2e-2, rtol=2e-2)


@pytest.mark.slow
def test_short_training_run_is_far_above_chance():
    omniglot = load_omniglot()
    backbone = recipe.train_member(omniglot, seed=0, steps=100, n_way=20, augment=False, hidden_channels=16,
                                   progress=False, val_every=None)
    learner = EnsembleProtoNet([backbone])
    untrained = EnsembleProtoNet([conv4(hidden_channels=16).eval()])
    sampler = lambda: EpisodicSampler(omniglot, 5, 1, 5, "val", seed=4)  # noqa: E731
    trained_acc, untrained_acc = evaluate(learner, sampler(), 50).mean, evaluate(untrained, sampler(), 50).mean
    assert trained_acc > 0.6 and trained_acc > untrained_acc + 0.15, (untrained_acc, trained_acc)


def test_weights_are_declared_package_data_and_small():
    """A non-editable install copies only files matched by pyproject's package-data globs."""
    import fnmatch
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    from importlib.resources import files
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["mlhelpers"]
    total = 0
    for info in pretrained.PRETRAINED.values():
        assert any(fnmatch.fnmatch(f"assets/{info.file}", g) for g in globs), (info.file, globs)
        path = Path(str(files("mlhelpers").joinpath("assets", info.file)))
        total += path.stat().st_size
    assert total <= 3 * 1024 * 1024, total


@pytest.mark.parametrize("kind, expected", [
    ("step", [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25]),
    ("cosine", [0.5 * (1 + math.cos(math.pi * t / 9)) for t in range(9)]),
])
def test_lr_schedules(kind, expected):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    scheduler = recipe.lr_schedule(optimizer, 9, kind)
    rates = []
    for _ in range(9):
        rates.append(optimizer.param_groups[0]["lr"] / 2.0)
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx(expected)
    if kind == "cosine":
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # after the last step


def test_distortion_strength_changes_training_and_needs_augment():
    omniglot = load_omniglot()
    train = lambda **kw: recipe.train_member(omniglot, seed=0, steps=3, n_way=5, hidden_channels=4,  # noqa: E731
                                             progress=False, val_every=None, **kw)
    default, stronger = train(), train(distortion={"max_rotate": 40.0, "max_shear": 0.4})
    assert not torch.equal(default[0][0].weight, stronger[0][0].weight)
    with pytest.raises(ValueError, match="augment=False"):
        train(augment=False, distortion={"max_rotate": 40.0})


def test_one_member_ensemble_refines_like_a_transductive_protonet():
    torch.manual_seed(0)
    backbone = conv4(hidden_channels=8).eval()
    task = EpisodicSampler(load_omniglot(), 4, 1, 3, "val", seed=2).sample(2)
    with torch.no_grad():
        expected = ProtoNet(backbone, transductive_steps=2)(task).log_softmax(-1)
        torch.testing.assert_close(EnsembleProtoNet([backbone], transductive_steps=2)(task), expected,
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_transductive_shipped_learner_is_at_least_as_accurate(learner):
    tasks = EpisodicSampler(load_omniglot(), 5, 1, 5, "test", seed=3).sample(20)
    transductive = pretrained.load(transductive_steps=3)
    accuracy = {}
    for name, model in (("inductive", learner), ("transductive", transductive)):
        predicted = model.predict_labels(tasks.support_x, tasks.support_y, tasks.query_x)
        accuracy[name] = (predicted == tasks.query_y).float().mean().item()
    assert accuracy["transductive"] >= accuracy["inductive"] and accuracy["transductive"] > 0.9, accuracy


def test_loading_does_not_import_the_recipe_or_the_training_loop():
    code = ("import sys; from mlhelpers import pretrained; pretrained.load(); "
            "print(sorted(m for m in ('mlhelpers.recipe', 'mlhelpers.training', 'mlhelpers.evaluation') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


# --- damaged or edited weights (issue 24, item 6) ---------------------------------------------


@pytest.mark.parametrize("name", sorted(pretrained.PRETRAINED))
def test_shipped_files_match_their_listed_sha256(name):
    file = pretrained.PRETRAINED[name].file
    data = (Path(pretrained.__file__).parent / "assets" / file).read_bytes()
    assert hashlib.sha256(data).hexdigest() == pretrained.ASSET_SHA256[file]


def test_an_edited_weight_in_a_shipped_file_is_refused(tmp_path, monkeypatch):
    """One weight tensor edited inside the shipped file used to load silently."""
    original = Path(pretrained.__file__).parent / "assets" / "protonet_omniglot.pt"
    saved = torch.load(original, weights_only=True)
    key = next(k for k, v in saved["state"].items() if v.is_floating_point())
    saved["state"][key] = saved["state"][key] + 0.01
    fake = tmp_path / "mlhelpers"
    (fake / "assets").mkdir(parents=True)
    torch.save(saved, fake / "assets" / "protonet_omniglot.pt")
    monkeypatch.setattr(pretrained, "files", lambda package: fake)  # the package, with the edited file
    with pytest.raises(CorruptCheckpointError, match="protonet_omniglot.pt is damaged or was changed"):
        pretrained.load()


def test_saved_learner_carries_a_checksum_verified_on_load(tmp_path):
    config = {"channels": 2, "members": 1, "tta_shift": 0}
    path = tmp_path / "w.pt"
    pretrained.save(pretrained.build(config), str(path), config)
    assert pretrained.load_file(str(path)).config == config
    saved = torch.load(path, weights_only=True)
    key = next(k for k, v in saved["state"].items() if v.is_floating_point())
    saved["state"][key] = saved["state"][key] * 2  # an edit that keeps the checksum written before it
    torch.save(saved, path)
    with pytest.raises(CorruptCheckpointError, match="content sha256"):
        pretrained.load_file(str(path))
    path.write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match="empty"):
        pretrained.load_file(str(path))
    with pytest.raises(FileNotFoundError, match="no weights file"):
        pretrained.load_file(str(tmp_path / "none.pt"))


def test_train_member_meta_trains_a_given_backbone_in_place():
    """A backbone passed in is trained instead of a fresh one: the one train_member would build with the
    same seed trains to the same weights, and the object returned is the one passed in."""
    omniglot = load_omniglot()
    train = lambda **kw: recipe.train_member(omniglot, seed=0, steps=3, n_way=5, hidden_channels=4,  # noqa: E731
                                             progress=False, val_every=None, **kw)
    fresh = train()
    seed_everything(0)
    given = conv4(hidden_channels=4, norm="batch").eval()
    start = [p.detach().clone() for p in given.parameters()]
    trained = train(backbone=given)
    assert trained is given and not trained.training
    assert not torch.equal(start[0], trained[0][0].weight)
    for a, b in zip(fresh.state_dict().values(), trained.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
