import os

import pytest
import torch
from torch import nn

from conftest import assert_same_state, clone_state, synthetic_dataset
from mlhelpers.checkpoint import CheckpointInUseError, load_checkpoint, save_checkpoint
from mlhelpers.evaluation import evaluate
from mlhelpers.learners import MetaLearner, ProtoNet
from mlhelpers.models import conv4, mlp
from mlhelpers.samplers.episodic import EpisodicSampler
from mlhelpers.samplers.regression import SinusoidTasks
from mlhelpers.training import History, meta_train

DATA = synthetic_dataset()


def mlp_protonet(seed: int = 0) -> ProtoNet:
    torch.manual_seed(seed)
    return ProtoNet(nn.Sequential(nn.Flatten(), mlp(64, 16, hidden=(32,))))


def conv_protonet(seed: int = 0) -> ProtoNet:
    """BatchNorm buffers and dropout (global torch RNG): both must survive a resume."""
    torch.manual_seed(seed)
    return ProtoNet(nn.Sequential(conv4(hidden_channels=8, num_blocks=2), nn.Dropout(0.2)))


def train_sampler(seed: int = 0) -> EpisodicSampler:
    return EpisodicSampler(DATA, 5, 5, 5, split="train", seed=seed)


def test_history_round_trip():
    history = History([1, 2], [0.5, 0.4], [2], [0.9], [0.01], "accuracy", 3.5)
    assert History.from_dict(history.to_dict()) == history
    with pytest.raises(ValueError, match="unknown keys \\['bogus'\\]"):
        History.from_dict({"bogus": 1})


@pytest.mark.slow
def test_protonet_learns_classes_it_never_saw():
    learner = mlp_protonet()
    test = lambda: EpisodicSampler(DATA, 5, 5, 5, split="test", seed=1)  # noqa: E731
    before = evaluate(learner, test(), num_episodes=100)
    history = meta_train(learner, train_sampler(), steps=100, meta_batch_size=4, seed=0, progress=False,
                         val_sampler=test(), val_every=50, val_episodes=20)
    after = evaluate(learner, test(), num_episodes=100)
    assert history.steps == list(range(1, 101))
    assert history.val_steps == [50, 100] and history.metric == "accuracy"
    first, last = sum(history.train_loss[:20]) / 20, sum(history.train_loss[-20:]) / 20
    assert last < 0.5 * first, (first, last)
    assert after.mean > 0.6, after  # chance is 0.2
    assert after.mean > before.mean + 0.15, (before, after)
    assert history.elapsed > 0


class RidgeRegression(MetaLearner):
    """Learned features + a ridge-regression head solved in closed form on each support set."""

    def __init__(self, features: int = 32, ridge: float = 0.1) -> None:
        super().__init__()
        self.features = mlp(1, features, hidden=(40, 40))
        self.ridge = ridge

    def phi(self, x):
        f = self.features(x)
        return torch.cat([f, torch.ones_like(f[..., :1])], dim=-1)

    def _adapt(self, support_x, support_y):
        p = self.phi(support_x)  # [T, K, D+1]
        gram = p.transpose(1, 2) @ p + self.ridge * torch.eye(p.shape[-1])
        return torch.linalg.solve(gram, p.transpose(1, 2) @ support_y)  # [T, D+1, 1]

    def _predict(self, adapted, query_x):
        return self.phi(query_x) @ adapted


@pytest.mark.slow
def test_sinusoid_regression_error_drops():
    torch.manual_seed(0)
    learner = RidgeRegression()
    before = evaluate(learner, SinusoidTasks(10, 20, seed=1), num_episodes=100)
    history = meta_train(learner, SinusoidTasks(10, 20, seed=0), steps=150, meta_batch_size=8, seed=0,
                         progress=False, val_sampler=SinusoidTasks(10, 20, seed=2), val_every=75, val_episodes=20)
    after = evaluate(learner, SinusoidTasks(10, 20, seed=1), num_episodes=100)
    assert history.metric == "mse"
    assert after.mean < 0.5 and after.mean < before.mean / 4, (before, after)
    # Predicting zero scores E[A^2] E[sin^2] = (5^3 - 0.1^3) / (3 * 4.9) / 2 = 4.25 for A ~ U[0.1, 5]
    # (the task mean does no better); the untrained learner scores about 3.6, the trained one 0.1.
    zero_mse = (5.0**3 - 0.1**3) / (3 * 4.9) / 2
    assert history.val_metric[-1] < zero_mse / 10, history.val_metric
    assert history.val_metric[-1] < history.val_metric[0], history.val_metric


@pytest.mark.slow
def test_resume_gives_exactly_the_uninterrupted_run(tmp_path):
    kwargs = dict(meta_batch_size=2, seed=7, progress=False, val_every=3, val_episodes=4, checkpoint_every=4)

    straight = conv_protonet()
    h_straight = meta_train(straight, train_sampler(), steps=10,
                            val_sampler=EpisodicSampler(DATA, 5, 1, 1, split="test", seed=9), **kwargs)

    path = tmp_path / "run.pt"
    first = conv_protonet()
    meta_train(first, train_sampler(), steps=6, checkpoint_path=path,
               val_sampler=EpisodicSampler(DATA, 5, 1, 1, split="test", seed=9), **kwargs)
    assert load_checkpoint(path)["step"] == 6
    # A new process would rebuild everything from scratch, with a different initialisation even.
    torch.manual_seed(123)
    resumed = conv_protonet(seed=99)
    h_resumed = meta_train(resumed, train_sampler(), steps=10, checkpoint_path=path,
                           val_sampler=EpisodicSampler(DATA, 5, 1, 1, split="test", seed=9), **kwargs)

    assert_same_state(straight, resumed)
    assert h_resumed.steps == list(range(1, 11))
    assert h_resumed.train_loss == h_straight.train_loss
    assert h_resumed.val_steps == h_straight.val_steps == [3, 6, 9]
    assert h_resumed.val_metric == h_straight.val_metric
    assert load_checkpoint(path)["step"] == 10

    # Running again once finished changes nothing.
    again = meta_train(resumed, train_sampler(), steps=10, checkpoint_path=path, **kwargs)
    assert again.train_loss == h_straight.train_loss
    assert_same_state(resumed, straight)
    with pytest.raises(ValueError, match="at step 10, beyond steps=5"):
        meta_train(resumed, train_sampler(), steps=5, checkpoint_path=path, **kwargs)


def test_same_seed_same_run_and_seed_mismatch_on_resume(tmp_path):
    a, b = mlp_protonet(), mlp_protonet()
    torch.manual_seed(1)  # meta_train's seed, not this, must decide the run
    meta_train(a, train_sampler(), steps=5, meta_batch_size=2, seed=3, progress=False)
    torch.manual_seed(2)
    meta_train(b, train_sampler(), steps=5, meta_batch_size=2, seed=3, progress=False,
               checkpoint_path=tmp_path / "b.pt")
    assert_same_state(a, b)
    with pytest.raises(ValueError, match="seed=3, but seed=4 was given"):
        meta_train(b, train_sampler(), steps=8, meta_batch_size=2, seed=4, progress=False,
                   checkpoint_path=tmp_path / "b.pt")


class NaNAfter(MetaLearner):
    """A ProtoNet whose meta-loss becomes NaN at the ``bad_step``-th call."""

    def __init__(self, bad_step: int) -> None:
        super().__init__()
        self.inner = mlp_protonet()
        self.bad_step, self.calls = bad_step, 0

    def _adapt(self, support_x, support_y):
        return self.inner.adapt(support_x, support_y)

    def _predict(self, adapted, query_x):
        return self.inner.predict(adapted, query_x)

    def _meta_loss(self, task):
        self.calls += 1
        loss = super()._meta_loss(task)
        return loss * float("nan") if self.calls == self.bad_step else loss


def test_non_finite_loss_names_the_step_and_keeps_the_last_checkpoint(tmp_path):
    path = tmp_path / "run.pt"
    kwargs = dict(meta_batch_size=2, progress=False, checkpoint_path=path, checkpoint_every=2, seed=0)
    meta_train(NaNAfter(bad_step=99), train_sampler(), steps=4, **kwargs)
    saved = path.read_bytes()

    learner = NaNAfter(bad_step=3)  # resumed at step 4, so the third call is step 7
    with pytest.raises(RuntimeError, match=r"non-finite loss \(nan\) at step 7") as error:
        meta_train(learner, train_sampler(), steps=10, **kwargs)
    assert "step 6" in str(error.value) and str(path) in str(error.value)
    # Step 6 was checkpointed; nothing was saved after the bad step.
    assert load_checkpoint(path)["step"] == 6
    assert path.read_bytes() != saved

    path2 = tmp_path / "run2.pt"
    meta_train(NaNAfter(bad_step=99), train_sampler(), steps=4, **{**kwargs, "checkpoint_path": path2})
    saved = path2.read_bytes()
    with pytest.raises(RuntimeError, match="at step 5"):
        meta_train(NaNAfter(bad_step=1), train_sampler(), steps=10, **{**kwargs, "checkpoint_path": path2})
    assert path2.read_bytes() == saved  # byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt", "run2.pt"]  # no temporary files left


def test_incompatible_config_on_resume_names_the_key(tmp_path):
    path = tmp_path / "run.pt"
    meta_train(mlp_protonet(), train_sampler(), steps=2, meta_batch_size=2, progress=False,
               checkpoint_path=path, config={"lr": 1e-3, "backbone": "mlp"})
    with pytest.raises(ValueError, match=r"'lr': saved 0.001, expected 0.01"):
        meta_train(mlp_protonet(), train_sampler(), steps=4, meta_batch_size=2, progress=False,
                   checkpoint_path=path, config={"lr": 1e-2, "backbone": "mlp"})
    with pytest.raises(ValueError, match=r"'meta_batch_size': saved 2, expected 3"):
        meta_train(mlp_protonet(), train_sampler(), steps=4, meta_batch_size=3, progress=False,
                   checkpoint_path=path, config={"lr": 1e-3, "backbone": "mlp"})
    disagree = r"config\['meta_batch_size'\]=5 disagrees with the argument meta_batch_size=2"
    with pytest.raises(ValueError, match=disagree):
        meta_train(mlp_protonet(), train_sampler(), steps=4, meta_batch_size=2, progress=False,
                   config={"meta_batch_size": 5})


def test_grad_clip_bounds_the_update():
    learner = mlp_protonet()
    before = torch.cat([p.detach().flatten().clone() for p in learner.parameters()])
    sgd = torch.optim.SGD(learner.parameters(), lr=1.0)
    meta_train(learner, train_sampler(), steps=1, meta_batch_size=2, optimizer=sgd, grad_clip=1e-3, progress=False)
    after = torch.cat([p.detach().flatten() for p in learner.parameters()])
    step = (after - before).norm().item()
    assert 0 < step <= 1e-3 * (1 + 1e-4), step


def test_progress_bar_shows_loss_and_validation(capsys):
    meta_train(mlp_protonet(), train_sampler(), steps=4, meta_batch_size=2, progress=True,
               val_sampler=EpisodicSampler(DATA, 5, 1, 1, split="test", seed=0), val_every=2, val_episodes=3)
    err = capsys.readouterr().err
    assert "loss=" in err and "val_acc=" in err
    meta_train(mlp_protonet(), train_sampler(), steps=2, meta_batch_size=2, progress=False)
    assert capsys.readouterr().err == ""


def test_learner_mode_after_training_is_the_callers():
    learner = mlp_protonet().eval()
    meta_train(learner, train_sampler(), steps=2, meta_batch_size=2, progress=False,
               val_sampler=EpisodicSampler(DATA, 5, 1, 1, split="test", seed=0), val_every=1, val_episodes=2)
    assert learner.training is False


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"steps": 0}, ValueError, "steps must be at least 1, got 0"),
        ({"meta_batch_size": 1.5}, TypeError, "meta_batch_size must be an int, got float"),
        ({"val_every": 0}, ValueError, "val_every must be at least 1"),
        ({"grad_clip": -1.0}, ValueError, "grad_clip must be a finite number > 0, got -1.0"),
        ({"seed": "0"}, TypeError, "seed must be an int or None, got str"),
        ({"config": {"f": print}}, TypeError, r"config\['f'\] is a builtins.builtin_function_or_method"),
        ({"optimizer": "adam"}, TypeError, "optimizer must be a torch.optim.Optimizer or None, got str"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    arguments = {"steps": 2, "meta_batch_size": 2, "progress": False, **kwargs}
    with pytest.raises(error, match=match):
        meta_train(mlp_protonet(), train_sampler(), **arguments)


def test_non_finite_gradient_norm_stops_before_the_step_and_before_any_checkpoint(tmp_path):
    learner = mlp_protonet()
    before = clone_state(learner)
    for p in learner.parameters():
        p.register_hook(lambda g: g * float("inf"))  # a finite loss whose gradient overflows
    path = tmp_path / "run.pt"
    with pytest.raises(RuntimeError, match=r"non-finite gradient norm \(inf\) at step 1") as error:
        meta_train(learner, train_sampler(), steps=3, meta_batch_size=2, progress=False, grad_clip=1.0,
                   checkpoint_path=path)
    assert f"No checkpoint was written to {str(path)!r}" in str(error.value)
    assert not path.exists() and list(tmp_path.iterdir()) == []
    for key, value in clone_state(learner).items():
        assert torch.equal(value, before[key]), key  # the optimizer never stepped


def _scheduled(learner: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-2)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)


def test_scheduler_steps_once_per_step_and_resumes_exactly(tmp_path):
    kwargs = dict(meta_batch_size=2, seed=7, progress=False, checkpoint_every=3)
    straight = mlp_protonet()
    optimizer, scheduler = _scheduled(straight)
    meta_train(straight, train_sampler(), steps=6, optimizer=optimizer, scheduler=scheduler, **kwargs)
    assert scheduler.last_epoch == 6 and optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 / 8)

    path = tmp_path / "run.pt"
    first = mlp_protonet()
    optimizer, scheduler = _scheduled(first)
    meta_train(first, train_sampler(), steps=3, checkpoint_path=path, optimizer=optimizer, scheduler=scheduler,
               **kwargs)
    assert load_checkpoint(path)["scheduler"]["last_epoch"] == 3
    resumed = mlp_protonet(seed=99)
    optimizer, scheduler = _scheduled(resumed)
    meta_train(resumed, train_sampler(), steps=6, checkpoint_path=path, optimizer=optimizer, scheduler=scheduler,
               **kwargs)
    assert scheduler.last_epoch == 6
    assert_same_state(straight, resumed)
    with pytest.raises(ValueError, match="scheduler"):  # a run with a scheduler resumes only with one
        meta_train(mlp_protonet(), train_sampler(), steps=6, checkpoint_path=path, **kwargs)


def test_scheduler_must_drive_the_optimizer():
    learner = mlp_protonet()
    optimizer, scheduler = _scheduled(learner)
    with pytest.raises(TypeError, match="scheduler must be a torch.optim.lr_scheduler.LRScheduler or None"):
        meta_train(learner, train_sampler(), steps=1, meta_batch_size=1, optimizer=optimizer, scheduler="step")
    with pytest.raises(ValueError, match="scheduler must schedule the optimizer given to meta_train"):
        meta_train(learner, train_sampler(), steps=1, meta_batch_size=1, scheduler=scheduler)


# --- resuming with other settings, two runs on one path, unwritable paths (issue 24) ----------


def test_resume_refuses_another_learning_rate_or_optimizer_setting(tmp_path):
    """The saved optimizer state used to replace the learning rate given, without a word."""
    path = tmp_path / "run.pt"
    kwargs = dict(meta_batch_size=2, progress=False, checkpoint_path=path, seed=0)
    learner = mlp_protonet()
    meta_train(learner, train_sampler(), steps=2, optimizer=torch.optim.Adam(learner.parameters(), lr=1e-3),
               **kwargs)
    learner = mlp_protonet()
    with pytest.raises(ValueError, match=r"other optimizer settings \('lr': saved 0.001, given 0.01\)"):
        meta_train(learner, train_sampler(), steps=4, optimizer=torch.optim.Adam(learner.parameters(), lr=1e-2),
                   **kwargs)
    with pytest.raises(ValueError, match=r"'weight_decay': saved 0, given 0.1"):
        meta_train(learner, train_sampler(), steps=4,
                   optimizer=torch.optim.Adam(learner.parameters(), lr=1e-3, weight_decay=0.1), **kwargs)
    history = meta_train(learner, train_sampler(), steps=4,
                         optimizer=torch.optim.Adam(learner.parameters(), lr=1e-3), **kwargs)
    assert history.steps == [1, 2, 3, 4]


def test_resume_with_a_scheduler_compares_the_initial_learning_rate(tmp_path):
    path = tmp_path / "run.pt"
    kwargs = dict(meta_batch_size=2, progress=False, checkpoint_path=path, seed=0)
    learner = mlp_protonet()
    meta_train(learner, train_sampler(), steps=3, **dict(zip(("optimizer", "scheduler"), _scheduled(learner))),
               **kwargs)  # the saved lr has decayed: only the initial one must match
    meta_train(learner, train_sampler(), steps=4, **dict(zip(("optimizer", "scheduler"), _scheduled(learner))),
               **kwargs)
    optimizer = torch.optim.Adam(learner.parameters(), lr=5e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    with pytest.raises(ValueError, match=r"'initial lr': saved 0.01, given 0.05"):
        meta_train(learner, train_sampler(), steps=6, optimizer=optimizer, scheduler=scheduler, **kwargs)


def test_resume_refuses_another_training_sampler(tmp_path):
    """A sampler with other ways or shots used to resume without complaint."""
    path = tmp_path / "run.pt"
    kwargs = dict(meta_batch_size=2, progress=False, checkpoint_path=path, seed=0)
    meta_train(mlp_protonet(), train_sampler(), steps=2, **kwargs)
    other_ways = EpisodicSampler(DATA, 3, 5, 5, split="train", seed=0)
    with pytest.raises(ValueError, match=r"another train_sampler \('n_way': saved 5, given 3\)"):
        meta_train(mlp_protonet(), other_ways, steps=4, **kwargs)
    other_family = SinusoidTasks(5, 5, seed=0)
    with pytest.raises(ValueError, match=r"'class': saved 'EpisodicSampler', given 'SinusoidTasks'"):
        meta_train(mlp_protonet(), other_family, steps=4, **kwargs)
    meta_train(mlp_protonet(), train_sampler(), steps=4, **kwargs)  # the same settings resume


def test_checkpoints_without_sampler_settings_still_resume(tmp_path):
    path = tmp_path / "run.pt"
    kwargs = dict(meta_batch_size=2, progress=False, checkpoint_path=path, seed=0)
    meta_train(mlp_protonet(), train_sampler(), steps=2, **kwargs)
    state = load_checkpoint(path)
    del state["sampler_settings"]
    save_checkpoint(path, state)
    assert meta_train(mlp_protonet(), train_sampler(), steps=3, **kwargs).steps == [1, 2, 3]


class SecondRunInside(MetaLearner):
    """A ProtoNet that, on its first meta-loss, starts another ``meta_train`` on the same checkpoint."""

    def __init__(self, path) -> None:
        super().__init__()
        self.inner, self.path, self.error = mlp_protonet(), path, None

    def _adapt(self, support_x, support_y):
        return self.inner.adapt(support_x, support_y)

    def _predict(self, adapted, query_x):
        return self.inner.predict(adapted, query_x)

    def _meta_loss(self, task):
        if self.error is None:
            try:
                meta_train(mlp_protonet(seed=1), train_sampler(seed=1), steps=2, meta_batch_size=2,
                           progress=False, checkpoint_path=self.path, seed=1)
            except CheckpointInUseError as error:
                self.error = error
        return super()._meta_loss(task)


def test_two_runs_on_one_checkpoint_path_refuse_the_second(tmp_path):
    """Two runs on one path (other seeds) used to both finish, one overwriting the other."""
    path = tmp_path / "run.pt"
    learner = SecondRunInside(path)
    meta_train(learner, train_sampler(), steps=2, meta_batch_size=2, progress=False, checkpoint_path=path, seed=0)
    assert isinstance(learner.error, CheckpointInUseError)
    assert "is in use by pid" in str(learner.error) and "another checkpoint_path" in str(learner.error)
    assert load_checkpoint(path)["seed"] == 0  # the first run's checkpoint, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]  # lock released and deleted


class Counting(NaNAfter):
    """A ProtoNet that counts its meta-loss calls (a NaNAfter that never turns NaN)."""

    def __init__(self) -> None:
        super().__init__(bad_step=-1)


def _refused_before_training(path, error, match):
    learner = Counting()
    with pytest.raises(error, match=match):
        meta_train(learner, train_sampler(), steps=2, meta_batch_size=2, progress=False, checkpoint_path=path)
    assert learner.calls == 0  # no training time was spent


def test_unwritable_checkpoint_directory_is_refused_before_training(tmp_path, monkeypatch):
    """A read-only directory used to be reported at the first checkpoint, after the training time."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root writes anywhere: then the next case stands in
            _refused_before_training(locked / "run.pt", PermissionError, "cannot write a file in directory")
    finally:
        locked.chmod(0o700)
    real_open = os.open

    def read_only_disk(path, flags, *args):
        if flags & os.O_CREAT:
            raise OSError(30, "Read-only file system", path)  # EROFS, what a read-only mount gives root too
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only_disk)
    _refused_before_training(tmp_path / "run.pt", PermissionError, "Read-only file system")


def test_directory_empty_or_file_parent_checkpoint_path_is_refused_before_training(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    _refused_before_training(tmp_path, ValueError, "is a directory")
    _refused_before_training("", ValueError, "empty path")
    _refused_before_training(tmp_path / "notes.txt" / "run.pt", ValueError, "cannot write a file in directory")
