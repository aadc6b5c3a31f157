"""Every row of docs/validation.md is a test: the bad input it lists raises the error it names.

The table is parsed; each row's ID must have a trigger below and each trigger must have a row, so
the table and the tests cannot drift apart. A row passes when its trigger raises exactly the
error class of the "Error" column and the message contains every backticked fragment of the
"Message names" column (the argument, the value given and what was expected). Rows whose
"Function" column says "every learner" run their trigger on each learner of :data:`LEARNERS`.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from conftest import make_dataset
from mlhelpers import distributed, gradient_recipe, pretrained, recipe
from mlhelpers import learners as learners_module
from mlhelpers.checkpoint import (
    CheckpointInUseError,
    CorruptCheckpointError,
    checkpoint_lock,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from mlhelpers.config import QUICK_ENV_VAR, quick_mode, set_quick_mode
from mlhelpers.darts import MixedOp, SearchNetwork, architecture_gradient, mutate_architecture, regularized_evolution
from mlhelpers.data.augment import random_affine, random_elastic, random_stroke_width, shifted_copies
from mlhelpers.data.labelled import LabelledDataset
from mlhelpers.data.omniglot import load_full_omniglot, load_omniglot, preprocess, preprocess_many
from mlhelpers.data.ratings import load_movielens
from mlhelpers.display import markdown_table
from mlhelpers.distillation import Distillation
from mlhelpers.evaluation import evaluate, mean_confidence_interval
from mlhelpers.hpo import learner_objective, open_study, warm_start
from mlhelpers.learners import (
    ANIL,
    CAVIA,
    MAML,
    MANN,
    EnsembleProtoNet,
    FiLM,
    FiLMLearner,
    InContextLearner,
    MatchingNet,
    MetaLearner,
    MetaSGD,
    NearestCentroid,
    ProtoMAML,
    ProtoNet,
    RelationNet,
    Reptile,
    SiameseNet,
    accuracy_by_instance,
    task_loss,
    task_metric,
)
from mlhelpers.learners.functional import sgd_steps
from mlhelpers.learners.parallel import fastest, map_tasks_in_threads
from mlhelpers.models import conv4, mlp, resnet12
from mlhelpers.plotting import plot_regression_tasks, show_episode
from mlhelpers.rl import GaussianPolicy, PointNavigation, adapt_policy, reinforce_loss, rollout, sample_goals
from mlhelpers.samplers.episodic import EpisodicSampler
from mlhelpers.samplers.label_streams import LabelStreams
from mlhelpers.samplers.pairs import PairSampler
from mlhelpers.samplers.ratings import RatingTasks
from mlhelpers.samplers.regression import LinearTasks, SinusoidTasks
from mlhelpers.samplers.stream import DriftingSinusoidTasks, ReplaySampler
from mlhelpers.samplers.wrappers import AugmentedSampler
from mlhelpers.seeding import seed_everything
from mlhelpers.sequences import offset_labels
from mlhelpers.tasks import Task
from mlhelpers.training import meta_train
from mlhelpers.validation import NonFiniteError

TABLE = Path(__file__).resolve().parents[1] / "docs" / "validation.md"
ERRORS = {e.__name__: e for e in (ValueError, TypeError, RuntimeError, NonFiniteError, FileNotFoundError,
                                   PermissionError, CorruptCheckpointError, CheckpointInUseError)}


def parse_table(text: str) -> list[dict[str, object]]:
    """Rows ``| `id` | function | bad input | Error | `fragment` `fragment` |`` of the markdown table."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 5, f"a row needs 5 cells: {line}"
        ident, function, bad_input, error, names = cells
        rows.append({
            "id": ident.strip("`"),
            "function": function,
            "error": error,
            "fragments": re.findall(r"`([^`]+)`", names),
            "line": line,
        })
    return rows


ROWS = parse_table(TABLE.read_text(encoding="utf-8"))


# --- what the triggers use ------------------------------------------------------------------


def image_task(tasks: int = 2, n_way: int = 3, k: int = 2, q: int = 2, x_shape=(1, 8, 8), seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_way)
    return Task(
        torch.rand(tasks, n_way * k, *x_shape, generator=g),
        labels.repeat_interleave(k).expand(tasks, -1).clone(),
        torch.rand(tasks, n_way * q, *x_shape, generator=g),
        labels.repeat_interleave(q).expand(tasks, -1).clone(),
    )


def regression_task(tasks: int = 2, k: int = 4, q: int = 3) -> Task:
    return SinusoidTasks(k, q, seed=0).sample(tasks)


def _meta_loss_twice() -> None:
    learner = MAML(mlp(1, 1, hidden=(8,)), strategy="loop")
    torch.autograd.grad(learner.meta_loss(regression_task()), list(learner.parameters()), create_graph=True)


def _small_conv(out_features: int | None = None) -> nn.Module:
    return conv4(hidden_channels=4, num_blocks=2, norm="none", out_features=out_features, image_size=8)


def _relation() -> RelationNet:
    return RelationNet(_small_conv()[:-1], input_shape=(1, 8, 8), hidden_channels=4)


def _cavia_conv() -> CAVIA:
    """CAVIA on a small conv net: the context modulates the first block's channels (FiLM)."""
    return CAVIA(_small_conv(3), num_context=4, film_after=0, channels=4, strategy="loop")


def _film_learner() -> FiLMLearner:
    return FiLMLearner(_small_conv(3), input_shape=(1, 8, 8), target_features=3, film_after=0, channels=4,
                       embed_dim=8, encoder_hidden=(16,), strategy="loop")


LEARNERS: dict[str, tuple[Callable[[], MetaLearner], tuple[int, ...]]] = {
    "ProtoNet": (lambda: ProtoNet(_small_conv()), (1, 8, 8)),
    "MatchingNet": (lambda: MatchingNet(_small_conv()), (1, 8, 8)),
    "RelationNet": (_relation, (1, 8, 8)),
    "NearestCentroid": (lambda: NearestCentroid(_small_conv()), (1, 8, 8)),
    "MAML": (lambda: MAML(_small_conv(3), strategy="loop"), (1, 8, 8)),
    "MetaSGD": (lambda: MetaSGD(_small_conv(3), strategy="loop"), (1, 8, 8)),
    "ANIL": (lambda: ANIL(_small_conv(3), strategy="loop"), (1, 8, 8)),
    "Reptile": (lambda: Reptile(_small_conv(3), strategy="loop"), (1, 8, 8)),
    "CAVIA": (_cavia_conv, (1, 8, 8)),
    "FiLMLearner": (_film_learner, (1, 8, 8)),
    "ProtoMAML": (lambda: ProtoMAML(_small_conv(), strategy="loop"), (1, 8, 8)),
    "SiameseNet": (lambda: SiameseNet(_small_conv(), input_shape=(1, 8, 8)), (1, 8, 8)),
    "InContextLearner": (lambda: InContextLearner(4, n_way=3, d_model=16, n_layers=1, n_heads=2), (4,)),
    "MANN": (lambda: MANN(16, 3, encoder=_small_conv(16), controller=8, slots=6, width=4, heads=2), (1, 8, 8)),
    "EnsembleProtoNet": (lambda: EnsembleProtoNet([_small_conv(), _small_conv()], tta_shift=1), (1, 8, 8)),
}
"""Every learner of the package, with the input shape of one example it takes
(``test_learners_cover_every_learner_the_package_exports`` keeps it complete)."""

LEARNER_BASES = ("MetaLearner", "GradientLearner")
"""Exported base classes: every other MetaLearner that mlhelpers.learners exports is in :data:`LEARNERS`."""


def per_learner(fn: Callable[[MetaLearner, tuple[int, ...]], object]) -> Callable[[], object]:
    """A trigger run on every learner of :data:`LEARNERS` (the test checks each raises)."""
    fn.per_learner = True  # type: ignore[attr-defined]
    return fn


def with_nan(t: torch.Tensor, value: float = float("nan")) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[1] = value
    return t


def replace(task: Task, **fields: torch.Tensor) -> Task:
    parts = dict(support_x=task.support_x, support_y=task.support_y, query_x=task.query_x, query_y=task.query_y)
    return Task(**{**parts, **fields})


def replace_info(task: Task, info: dict) -> Task:
    return Task(task.support_x, task.support_y, task.query_x, task.query_y, info)


def meta_device(t: torch.Tensor) -> torch.Tensor:
    """The same tensor on PyTorch's shape-only ``meta`` device: a second device on any machine."""
    return t.to("meta")


def train_sampler() -> EpisodicSampler:
    return EpisodicSampler(make_dataset(), 3, 1, 1, split="train", seed=0)


def train(tmp_path: Path | None = None, **kwargs):
    arguments = dict(steps=2, meta_batch_size=2, progress=False)
    arguments.update(kwargs)
    learner = arguments.pop("learner", None) or ProtoNet(nn.Flatten())
    if isinstance(learner, ProtoNet) and not list(learner.parameters()):
        learner = ProtoNet(nn.Sequential(nn.Flatten(), nn.Linear(36, 4)))
    return meta_train(learner, arguments.pop("sampler", None) or train_sampler(), **arguments)


class NaNLoss(MetaLearner):
    """A learner whose meta-loss is NaN from the first step."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = ProtoNet(nn.Sequential(nn.Flatten(), nn.Linear(36, 4)))

    def _adapt(self, support_x, support_y):
        return self.inner.adapt(support_x, support_y)

    def _predict(self, adapted, query_x):
        return self.inner.predict(adapted, query_x)

    def _meta_loss(self, task):
        return super()._meta_loss(task) * float("nan")


class NonFiniteOutputs(MetaLearner):
    """A learner whose ``out_features`` outputs are all ``value`` (NaN or infinity): 3 NaN logits still
    have a valid-looking argmax, 1 infinite output is a regressor's prediction."""

    def __init__(self, out_features: int, value: float) -> None:
        super().__init__()
        self.head = nn.Linear(1, out_features)
        self.value = value

    def _adapt(self, support_x, support_y):
        return None

    def _predict(self, adapted, query_x):
        return self.head(query_x.flatten(2)[..., :1]) * self.value


def dataset(**changes) -> LabelledDataset:
    base = make_dataset()
    fields = dict(images=base.images, labels=base.labels, class_names=base.class_names,
                  class_groups=base.class_groups, group_names=base.group_names, splits=base.splits)
    fields.update(changes)
    return LabelledDataset(**fields)


def checkpoint_run(tmp: Path, **kwargs) -> Path:
    path = tmp / "run.pt"
    train(steps=2, checkpoint_path=path, seed=3, config={"lr": 1e-3}, **kwargs)
    return path


def damaged_checkpoint(tmp: Path) -> None:
    save_checkpoint(tmp / "run.pt", {"step": 1})
    (tmp / "broken.pt").write_bytes((tmp / "run.pt").read_bytes()[:100])
    load_checkpoint(tmp / "broken.pt")


def flipped_checkpoint(tmp: Path) -> None:
    weights = torch.arange(16, dtype=torch.float32)
    save_checkpoint(tmp / "run.pt", {"step": 1, "weights": weights})
    data = bytearray((tmp / "run.pt").read_bytes())
    data[data.index(weights.numpy().tobytes()) + 5] ^= 0x01
    (tmp / "run.pt").write_bytes(bytes(data))
    load_checkpoint(tmp / "run.pt")


def unwritable_checkpoint(tmp: Path) -> None:
    locked = tmp / "locked"
    locked.mkdir(mode=0o500)
    try:
        # root may write anywhere; /sys refuses a new file even to root
        place = locked if not os.access(locked, os.W_OK) else Path("/sys")
        train(checkpoint_path=place / "run.pt")
    finally:
        locked.chmod(0o700)


def checkpoint_in_use(tmp: Path) -> None:
    with checkpoint_lock(tmp / "run.pt"):
        train(checkpoint_path=tmp / "run.pt")


def changed_asset() -> None:
    saved = dict(pretrained.ASSET_SHA256)
    pretrained.ASSET_SHA256["protonet_omniglot.pt"] = "0" * 64  # as if the file's bytes had changed
    try:
        pretrained.load()
    finally:
        pretrained.ASSET_SHA256.update(saved)


def damaged_weights_file(tmp: Path) -> None:
    pretrained.save(pretrained.build({"channels": 2, "members": 1, "tta_shift": 0}), tmp / "w.pt",
                    {"channels": 2, "members": 1, "tta_shift": 0})
    (tmp / "w.pt").write_bytes((tmp / "w.pt").read_bytes()[:-200])
    pretrained.load_file(tmp / "w.pt")


# --- one trigger per row --------------------------------------------------------------------

def _search_network():
    operations = ("zero", "skip", "conv3x3", "avg_pool3x3")
    net = SearchNetwork(1, 3, hidden_channels=2, cells=1, nodes=2, operations=operations)
    return net, net.init_alphas(), (torch.zeros(2, 1, 6, 6), torch.zeros(2, dtype=torch.long))


def _train_sampler():
    return EpisodicSampler(make_dataset(), 3, 1, 1, "train", seed=0)


def _smac():
    """mlhelpers.smac_adapter, which needs the book's extra (SMAC, ConfigSpace): imported when a row needs it."""
    pytest.importorskip("smac")
    return importlib.import_module("mlhelpers.smac_adapter")


def _replay_state(fresh: int, rounds: int) -> dict:
    """The state of a ReplaySampler (no capacity) after ``rounds`` rounds of ``fresh`` tasks."""
    replay = ReplaySampler(DriftingSinusoidTasks(5, 5, rounds=10, seed=0), fresh=fresh, seed=0)
    for _ in range(rounds):
        replay.sample(fresh)
    return replay.state_dict()


def _rl(episodes: int = 2):
    policy = GaussianPolicy(hidden=(4,))
    env = PointNavigation(torch.zeros(1, 2), horizon=2)
    return policy, env, rollout(policy, env, episodes, torch.Generator().manual_seed(0))


TRIGGERS: dict[str, Callable] = {
    # ratings and reinforcement learning (Chapter 7)
    "ratings-items": lambda: RatingTasks(3, 3, n_items=5),
    "ratings-noise": lambda: RatingTasks(3, 3, noise_std=-1.0),
    "movielens-download": lambda tmp: load_movielens(tmp),
    "movielens-root": lambda: load_movielens(3),
    "movielens-flag": lambda: load_movielens("data", download="yes"),
    "rl-goals-shape": lambda: PointNavigation(torch.zeros(3)),
    "rl-goals-finite": lambda: PointNavigation(torch.tensor([[0.0, float("nan")]])),
    "rl-step-size": lambda: PointNavigation(torch.zeros(1, 2), step_size=0),
    "rl-step-shapes": lambda: PointNavigation(torch.zeros(1, 2)).step(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3)),
    "rl-goal-range": lambda: sample_goals(2, torch.Generator(), low=1, high=0),
    "rl-init-std": lambda: GaussianPolicy(init_std=0),
    "rl-env": lambda: rollout(GaussianPolicy(), "env", 2, torch.Generator()),
    "rl-generator": lambda: rollout(GaussianPolicy(), PointNavigation(torch.zeros(1, 2)), 2, 0),
    "rl-trajectories": lambda: reinforce_loss(GaussianPolicy(), [1]),
    "rl-gamma": lambda: (lambda p, e, t: reinforce_loss(p, t, gamma=2))(*_rl()),
    "rl-baseline": lambda: (lambda p, e, t: reinforce_loss(p, t))(*_rl(episodes=1)),
    "rl-inner-lr": lambda: (lambda p, e, t: adapt_policy(p, e, inner_lr=-1, steps=1, num_episodes=2,
                                                         generator=torch.Generator()))(*_rl()),
    # the pretrained learner, augmentation, tuning and architecture search
    "pretrained-name": lambda: pretrained.load("resnet"),
    "pretrained-transductive": lambda: pretrained.load(transductive_steps=1.5),
    "pretrained-asset-checksum": changed_asset,
    "pretrained-file-damaged": damaged_weights_file,
    "pretrained-images": lambda: pretrained.load().predict_labels([1], torch.zeros(5), torch.zeros(3, 1, 28, 28)),
    "pretrained-image-range": lambda: pretrained.load().predict_labels(
        torch.zeros(2, 1, 28, 28), torch.tensor([0, 1]), torch.full((3, 1, 28, 28), 255.0)),
    "pretrained-label-strings": lambda: pretrained.load().predict_labels(
        torch.zeros(2, 1, 28, 28), ["a", "b"], torch.zeros(1, 1, 28, 28)),
    "pretrained-labels": lambda: pretrained.load().predict_labels(torch.zeros(5, 1, 28, 28), torch.zeros(5),
                                                                   torch.zeros(3, 1, 28, 28)),
    "pretrained-schedule": lambda: recipe.train_member(load_omniglot(), seed=0, steps=1, schedule="linear"),
    "pretrained-distortion": lambda: recipe.train_member(load_omniglot(), seed=0, steps=1, augment=False,
                                                         distortion={"max_rotate": 20.0}),
    "gradient-recipe-name": lambda: gradient_recipe.make_gradient_learner("ProtoNet", 5),
    "gradient-recipe-use-query": lambda: gradient_recipe.make_gradient_learner("MAML", 5, use_query=True),
    "gradient-recipe-n-way": lambda: gradient_recipe.train_gradient_learner(load_omniglot(), "MAML", 10, steps=1),
    "augment-shape": lambda: shifted_copies(torch.zeros(5)),
    "augment-p-each": lambda: random_affine(torch.zeros(1, 1, 4, 4), p_each=1.5),
    "distillation-student": lambda: Distillation(conv4(), EnsembleProtoNet([conv4()])),
    "distillation-teacher": lambda: Distillation(ProtoNet(conv4()), ProtoNet(conv4())),
    "augment-stroke-change": lambda: random_stroke_width(torch.zeros(1, 1, 4, 4), 1.5),
    "augment-elastic-sigma": lambda: random_elastic(torch.zeros(1, 1, 4, 4), 1.0, sigma=0.0),
    "augment-sampler-elastic": lambda: AugmentedSampler(EpisodicSampler(load_omniglot(), 3, 1, 1, "train", seed=0),
                                                        elastic_alpha=-1.0),
    "hpo-report-every": lambda: learner_objective(lambda t: None, _train_sampler(), _train_sampler(), steps=4,
                                                  report_every=0),
    "hpo-build": lambda: learner_objective("conv4", _train_sampler(), _train_sampler(), steps=4, report_every=2),
    "hpo-sampler": lambda: learner_objective(lambda t: None, [1], _train_sampler(), steps=4, report_every=2),
    "hpo-direction": lambda tmp_path: (open_study("d", tmp_path / "d.log"),
                                       open_study("d", tmp_path / "d.log", direction="minimize")),
    "hpo-top-k": lambda: warm_start(optuna.create_study(), [], top_k=0),
    "darts-operations": lambda: MixedOp(2, ["skip", "conv7x7"]),
    "darts-alphas-shape": lambda: (lambda net, a, b: net(b[0], a[:2]))(*_search_network()),
    "darts-xi": lambda: (lambda net, a, b: architecture_gradient(net, a, b, b, xi=-1))(*_search_network()),
    "darts-alphas-grad": lambda: (lambda net, a, b: architecture_gradient(net, a.detach(), b, b, xi=0.1))(
        *_search_network()),
    # Task
    "task-field-type": lambda: replace(image_task(), support_x=[[1.0]]),
    "task-field-rank": lambda: replace(image_task(), support_x=torch.zeros(3)),
    "task-batch-size": lambda: replace(image_task(tasks=3), support_y=torch.zeros(2, 6, dtype=torch.long)),
    "task-example-count": lambda: replace(image_task(), query_y=torch.zeros(2, 7, dtype=torch.long)),
    "task-empty-support": lambda: Task(torch.zeros(2, 0, 1), torch.zeros(2, 0, 1),
                                       torch.zeros(2, 3, 1), torch.zeros(2, 3, 1)),
    "task-empty-query": lambda: Task(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1),
                                     torch.zeros(2, 0, 1), torch.zeros(2, 0, 1)),
    "task-example-shape": lambda: replace(image_task(), query_x=torch.zeros(2, 6, 1, 9, 9)),
    "task-devices": lambda: replace(image_task(), query_x=meta_device(image_task().query_x)),
    "task-info": lambda: replace_info(image_task(), {"w": [1.0]}),
    "task-cat-type": lambda: Task.cat([image_task(), "x"]),
    "task-cat-info": lambda: Task.cat([image_task(), replace_info(image_task(), {"w": torch.zeros(2)})]),
    # LabelledDataset
    "dataset-images-rank": lambda: dataset(images=torch.zeros(120, 6, 6)),
    "dataset-images-dtype": lambda: dataset(images=torch.zeros(120, 1, 6, 6, dtype=torch.uint8)),
    "dataset-images-finite": lambda: dataset(images=with_nan(make_dataset().images)),
    "dataset-labels-dtype": lambda: dataset(labels=make_dataset().labels.int()),
    "dataset-labels-range": lambda: dataset(labels=make_dataset().labels + 1),
    "dataset-split-range": lambda: dataset(splits={"extra": torch.tensor([99])}),
    "dataset-splits-type": lambda: dataset(splits=[torch.tensor([0])]),
    "dataset-split-overlap": lambda: dataset(splits={"a": torch.tensor([0, 1]), "b": torch.tensor([1, 2])}),
    # Omniglot
    "omniglot-type": lambda: preprocess("img"),
    "omniglot-shape": lambda: preprocess(np.zeros((28, 28))),
    "omniglot-finite": lambda: preprocess(np.full((105, 105), np.nan)),
    "omniglot-ink": lambda: preprocess_many([np.full((105, 105), 3)]),
    "omniglot-flag": lambda: load_omniglot(split_by_alphabet="yes"),
    "omniglot-missing": lambda: load_full_omniglot("/nonexistent"),
    # EpisodicSampler
    "sampler-dataset": lambda: EpisodicSampler([1, 2, 3], 2, 1, 1),
    "sampler-size-type": lambda: EpisodicSampler(make_dataset(), 2, 1.5, 1),
    "sampler-flag": lambda: EpisodicSampler(make_dataset(), 3, 1, 1, split="train", rotations="no"),
    "sampler-rotations-square": lambda: EpisodicSampler(dataset(images=torch.zeros(120, 1, 8, 6)), 3, 1, 1,
                                                        split="train", rotations=True),
    "sampler-size-range": lambda: EpisodicSampler(make_dataset(), 0, 1, 1),
    "sampler-too-many-ways": lambda: EpisodicSampler(make_dataset(), 5, 1, 1, split="test"),
    "sampler-too-many-ways-rotated": lambda: EpisodicSampler(make_dataset(), 17, 1, 1, split="test", rotations=True),
    "sampler-too-many-shots": lambda: EpisodicSampler(make_dataset(), 2, 6, 5, split="train"),
    "sampler-within-group": lambda: EpisodicSampler(make_dataset(), 3, 1, 1, split="train", within_group=True),
    "sampler-unknown-split": lambda: EpisodicSampler(make_dataset(), 2, 1, 1, split="meta-test"),
    "sampler-seed": lambda: EpisodicSampler(make_dataset(), 2, 1, 1, seed="0"),
    "sampler-num-tasks": lambda: train_sampler().sample(0),
    "sampler-num-batches": lambda: next(train_sampler().batches(2, num_batches=0)),
    "sampler-state": lambda: train_sampler().load_state_dict({"rng": 1}),
    # Regression task families
    "regression-range-order": lambda: SinusoidTasks(5, 5, amplitude=(5.0, 0.1)),
    "regression-range-finite": lambda: SinusoidTasks(5, 5, x_range=(float("-inf"), 5.0)),
    "stream-position-range": lambda: DriftingSinusoidTasks(5, 5, rounds=10, start=0.5, end=1.5),
    "stream-rounds": lambda: DriftingSinusoidTasks(5, 5, rounds=0),
    "stream-position-mixture": lambda: DriftingSinusoidTasks(5, 5, rounds=None).position(),
    "stream-state": lambda: DriftingSinusoidTasks(5, 5, rounds=3).load_state_dict(SinusoidTasks(5, 5).state_dict()),
    "label-streams-per-class": lambda: LabelStreams(torch.zeros(2, 24, 2), torch.arange(2).repeat_interleave(12),
                                                    torch.tensor([0, 1]), n_way=2, per_class=12),
    "label-streams-turns": lambda: LabelStreams(torch.zeros(2, 24, 2), torch.arange(2).repeat_interleave(12),
                                                torch.tensor([0, 1]), n_way=2, turns=3),
    "label-streams-n-way": lambda: LabelStreams(torch.zeros(2, 24, 2), torch.arange(2).repeat_interleave(12),
                                                torch.tensor([0, 1]), n_way=3, per_class=2),
    "replay-too-few": lambda: ReplaySampler(DriftingSinusoidTasks(5, 5, rounds=3), fresh=4).sample(2),
    "replay-capacity": lambda: ReplaySampler(DriftingSinusoidTasks(5, 5, rounds=3), fresh=4, capacity=0),
    "regression-noise": lambda: LinearTasks(2, 5, 5, noise_std=-1.0),
    "regression-scale": lambda: LinearTasks(2, 5, 5, x_scale=float("nan")),
    # Every learner (MetaLearner.forward, meta_loss, adapt, predict)
    "learner-task-type": per_learner(lambda learner, shape: learner({"support_x": 1})),
    "learner-support-x-finite": per_learner(lambda learner, shape: learner.meta_loss(
        replace(t := image_task(x_shape=shape), support_x=with_nan(t.support_x)))),
    "learner-query-x-finite": per_learner(lambda learner, shape: learner(
        replace(t := image_task(x_shape=shape), query_x=with_nan(t.query_x, float("inf"))))),
    "learner-x-dtype": per_learner(lambda learner, shape: learner.adapt(
        torch.zeros(2, 6, *shape, dtype=torch.int64), image_task(x_shape=shape).support_y)),
    "learner-float-width": per_learner(lambda learner, shape: learner.adapt(
        image_task(x_shape=shape).support_x.double(), image_task(x_shape=shape).support_y)),
    "learner-label-rank": per_learner(lambda learner, shape: learner.adapt(
        image_task(x_shape=shape).support_x, image_task(x_shape=shape).support_y[..., None])),
    "learner-negative-label": per_learner(lambda learner, shape: learner.adapt(
        image_task(x_shape=shape).support_x, torch.tensor([[0, 0, 1, 1, 2, -1]] * 2))),
    "learner-label-dtype": per_learner(lambda learner, shape: learner.adapt(
        image_task(x_shape=shape).support_x, torch.ones(2, 6, dtype=torch.bool))),
    "learner-label-kinds": per_learner(lambda learner, shape: learner(
        replace(t := image_task(x_shape=shape), query_y=t.query_y.float()))),
    "learner-support-shapes": per_learner(lambda learner, shape: learner.adapt(
        image_task(x_shape=shape).support_x, torch.zeros(2, 5, dtype=torch.long))),
    "learner-example-rank": per_learner(lambda learner, shape: learner.adapt(
        image_task(x_shape=shape).support_x.unsqueeze(-1), image_task(x_shape=shape).support_y)),
    "learner-device": per_learner(lambda learner, shape: learner(image_task(x_shape=shape).to("meta"))),
    "learner-empty-query": per_learner(
        lambda learner, shape: learner.predict(None, image_task(x_shape=shape).query_x[:, :0])),
    "learner-adapted-tasks": per_learner(lambda learner, shape: learner.predict(
        learner.adapt(image_task(x_shape=shape).support_x, image_task(x_shape=shape).support_y),
        image_task(tasks=3, x_shape=shape).query_x)),
    "learner-query-device": per_learner(
        lambda learner, shape: learner.predict(None, image_task(x_shape=shape).query_x.to("meta"))),
    "regression-targets-finite": lambda: MAML(mlp(1, 1, hidden=(8,)), strategy="loop").meta_loss(
        replace(t := regression_task(), support_y=with_nan(t.support_y))),
    "meta-loss-twice": _meta_loss_twice,
    "learner-missing-class": lambda: ProtoNet(nn.Flatten()).adapt(torch.rand(1, 3, 4), torch.tensor([[0, 2, 2]])),
    "learner-backbone": lambda: ProtoNet("conv4"),
    "protonet-transductive": lambda: ProtoNet(nn.Flatten(), transductive_steps=-1),
    "siamese-backbone": lambda: SiameseNet(_small_conv()[:-1], input_shape=(1, 8, 8)),
    "protomaml-head-name": lambda: ProtoMAML(nn.ModuleDict({"proto_head": nn.Linear(2, 2)})),
    "pair-sampler-negatives": lambda: PairSampler(make_dataset(), "train", negatives="between"),
    "pair-sampler-across": lambda: PairSampler(make_dataset(), "train", negatives="across", n_way=4),
    "learner-query-label-range": lambda: MAML(_small_conv(3), strategy="loop").meta_loss(
        replace(t := image_task(), query_y=t.query_y + 3)),
    # task_loss / task_metric
    "loss-label-shapes": lambda: task_loss(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long)),
    "loss-regression-shapes": lambda: task_metric(torch.zeros(2, 3, 2), torch.zeros(2, 3, 1)),
    "loss-outputs-dtype": lambda: task_loss(torch.zeros(2, 3, 5, dtype=torch.long),
                                            torch.zeros(2, 3, dtype=torch.long)),
    # Gradient-based learners' options
    "maml-inner-lr": lambda: MAML(mlp(1, 1), inner_lr=-0.5),
    "maml-steps": lambda: MAML(mlp(1, 1), inner_steps=-1),
    "maml-strategy": lambda: MAML(mlp(1, 1), strategy="fast"),
    "maml-running-stats": lambda: MAML(conv4(norm="batch")),
    "sgd-lrs": lambda: sgd_steps(lambda fast: fast["w"].sum(), {"w": torch.zeros(2, requires_grad=True)}, {}, 1,
                                 create_graph=False, functional=False),
    "sgd-steps": lambda: sgd_steps(lambda fast: fast["w"].sum(), {"w": torch.zeros(2, requires_grad=True)},
                                   {"w": 0.1}, -2, create_graph=False, functional=False),
    "parallel-workers": lambda: map_tasks_in_threads(lambda m, t: None, nn.Linear(1, 1), image_task(), 0),
    "parallel-fastest-rounds": lambda: fastest({"a": lambda: None}, rounds=0),
    "parallel-fastest-empty": lambda: fastest({}),
    "reptile-inner-optimizer": lambda: Reptile(mlp(1, 1), inner_optimizer="rmsprop"),
    "reptile-inner-batch": lambda: Reptile(mlp(1, 1), inner_batch_size=0),
    "anil-head": lambda: ANIL(mlp(1, 1), head=9),
    "cavia-num-context": lambda: CAVIA(mlp(1, 1), num_context=0),
    "cavia-film-after": lambda: CAVIA(mlp(1, 1, hidden=(4, 4)), film_after=7, channels=4),
    "cavia-channels": lambda: CAVIA(mlp(6, 1), channels=4),
    "cavia-strategy": lambda: FiLMLearner(mlp(1, 1), input_shape=(1,), target_features=1, film_after=1,
                                          channels=40, strategy="threads"),
    "cavia-adapted": lambda: CAVIA(mlp(6, 1), strategy="loop").predict(torch.zeros(2, 3), regression_task().query_x),
    "film-channels": lambda: FiLM(2, 4)(torch.zeros(3, 5), torch.zeros(2)),
    "film-labels": lambda: _film_learner().adapt(image_task().support_x, torch.tensor([[0, 0, 1, 1, 2, 3]] * 2)),
    # Models
    "model-norm": lambda: conv4(norm="layer"),
    "model-size": lambda: conv4(hidden_channels=0),
    "model-resnet12-widths": lambda: resnet12(widths=(8, 16, 32)),
    "model-image-size": lambda: conv4(out_features=5, image_size=8, num_blocks=4),
    "model-activation": lambda: mlp(1, 1, activation=torch.relu),
    # Evaluation
    "evaluate-count": lambda: evaluate(ProtoNet(nn.Flatten()), train_sampler(), num_episodes=0),
    "evaluate-learner": lambda: evaluate(nn.Linear(2, 2), train_sampler(), num_episodes=2),
    "evaluate-sampler": lambda: evaluate(ProtoNet(nn.Flatten()), [image_task()], num_episodes=2),
    "evaluate-non-finite": lambda: evaluate(NonFiniteOutputs(1, float("inf")), SinusoidTasks(2, 2, seed=0),
                                            num_episodes=3),
    "evaluate-nan-logits": lambda: evaluate(NonFiniteOutputs(3, float("nan")), train_sampler(), num_episodes=3),
    "ci-empty": lambda: mean_confidence_interval([]),
    "ci-finite": lambda: mean_confidence_interval([0.5, float("nan")]),
    "ci-confidence": lambda: mean_confidence_interval([0.5, 0.6], confidence=95),
    # Training
    "train-learner": lambda: meta_train(nn.Linear(2, 2), train_sampler(), steps=1, meta_batch_size=1),
    "train-count": lambda: train(steps=0),
    "train-seed": lambda: train(seed="0"),
    "train-grad-clip": lambda: train(grad_clip=-1.0),
    "train-config-plain": lambda: train(config={"f": print}),
    "train-config-conflict": lambda: train(config={"meta_batch_size": 5}),
    "train-non-finite-loss": lambda: train(learner=NaNLoss()),
    # Checkpoints (tmp directory given by the test)
    "checkpoint-config": lambda tmp: train(steps=4, checkpoint_path=checkpoint_run(tmp), seed=3, config={"lr": 1e-2}),
    "checkpoint-seed": lambda tmp: train(steps=4, checkpoint_path=checkpoint_run(tmp), seed=4, config={"lr": 1e-3}),
    "checkpoint-model": lambda tmp: train(steps=4, checkpoint_path=checkpoint_run(tmp), seed=3, config={"lr": 1e-3},
                                          learner=ProtoNet(nn.Sequential(nn.Flatten(), nn.Linear(36, 7)))),
    "checkpoint-beyond": lambda tmp: train(steps=1, checkpoint_path=checkpoint_run(tmp), seed=3, config={"lr": 1e-3}),
    "checkpoint-foreign": lambda tmp: (save_checkpoint(tmp / "other.pt", {"weights": torch.zeros(2)}),
                                       train(checkpoint_path=tmp / "other.pt")),
    "checkpoint-unsaveable": lambda tmp: save_checkpoint(tmp / "x.pt", {"f": print}),
    "checkpoint-missing": lambda tmp: load_checkpoint(tmp / "nothing.pt"),
    "checkpoint-damaged": damaged_checkpoint,
    "checkpoint-checksum": flipped_checkpoint,
    "checkpoint-path-directory": lambda tmp: train(checkpoint_path=tmp),
    "checkpoint-unwritable": unwritable_checkpoint,
    "checkpoint-in-use": checkpoint_in_use,
    "resume-optimizer": lambda tmp: train(checkpoint_path=checkpoint_run(tmp), steps=4, seed=3, config={"lr": 1e-3},
                                          learner=(m := ProtoNet(nn.Sequential(nn.Flatten(), nn.Linear(36, 4)))),
                                          optimizer=torch.optim.Adam(m.parameters(), lr=1e-2)),
    "resume-sampler": lambda tmp: train(checkpoint_path=checkpoint_run(tmp), steps=4, seed=3, config={"lr": 1e-3},
                                        sampler=EpisodicSampler(make_dataset(), 2, 1, 1, split="train", seed=0)),
    # Plotting, seeding, configuration
    "plot-task": lambda: show_episode({"support_x": 1}),
    "plot-kind": lambda: plot_regression_tasks(image_task()),
    "table-header": lambda: markdown_table([], []),
    "table-row": lambda: markdown_table(["learner", "accuracy"], [("MAML", "56.2", "extra")]),
    "seed-type": lambda: seed_everything(1.5),
    "seed-range": lambda: seed_everything(-3),
    "seed-too-large": lambda: seed_everything(2**64),
    "quick-mode-override": lambda: set_quick_mode("yes"),
    "rng-state": lambda: set_rng_state({"torch": torch.get_rng_state()}),
    "quick-mode-env": "env",
    # Found by the second hostile-user probe (issue 24): the components added since the first one
    "train-no-parameters": lambda: meta_train(ProtoNet(nn.Flatten()), train_sampler(), steps=1, meta_batch_size=1),
    "maml-no-parameters": lambda: MAML(mlp(1, 1).requires_grad_(False), strategy="loop")(regression_task()),
    "resume-learner": lambda tmp: train(checkpoint_path=checkpoint_run(tmp), steps=4, seed=3, config={"lr": 1e-3},
                                        learner=ProtoNet(nn.Sequential(nn.Flatten(), nn.Linear(36, 4)),
                                                         transductive_steps=1)),
    "siamese-query-labels": lambda: SiameseNet(_small_conv(), input_shape=(1, 8, 8)).meta_loss(
        replace(t := image_task(), query_y=t.query_y + 3)),
    "siamese-adapted": lambda: SiameseNet(_small_conv(), input_shape=(1, 8, 8)).predict({}, image_task().query_x),
    "siamese-pairs": lambda: SiameseNet(_small_conv(), input_shape=(1, 8, 8)).score_pairs(
        torch.rand(3, 1, 8, 8), torch.rand(2, 1, 8, 8)),
    "learner-input-shape": lambda: SiameseNet(_small_conv(), input_shape="1,8,8"),
    "mann-encoder": lambda: MANN(16, 3, encoder="conv4"),
    "instance-accuracy-finite": lambda: accuracy_by_instance(torch.full((2, 6, 3), float("nan")),
                                                             image_task().support_y),
    "instance-accuracy-labels": lambda: accuracy_by_instance(torch.zeros(2, 6, 3), image_task().support_y + 3),
    "film-target-width": lambda: FiLMLearner(mlp(1, 1, hidden=(4, 4)), input_shape=(1,), target_features=1,
                                             film_after=1, channels=4).adapt(
        (t := regression_task()).support_x, t.support_y.repeat(1, 1, 2)),
    "offset-labels-n-way": lambda: offset_labels(torch.tensor([[0, 2, 1]]), "3"),
    "pair-sampler-ways": lambda: PairSampler(make_dataset(), "train", n_way=1),
    "stream-round": lambda: DriftingSinusoidTasks(5, 5, rounds=10).position(-1),
    "stream-window": lambda: DriftingSinusoidTasks(5, 5, rounds=10).phase_window(1.5),
    "stream-state-round": lambda: DriftingSinusoidTasks(5, 5, rounds=10).load_state_dict(
        {"generator": torch.Generator().get_state(), "round": torch.tensor(-4)}),
    "replay-state-capacity": lambda: ReplaySampler(DriftingSinusoidTasks(5, 5, rounds=3), fresh=2, capacity=3)
    .load_state_dict(_replay_state(fresh=2, rounds=5)),
    "replay-state-seen": lambda: ReplaySampler(DriftingSinusoidTasks(5, 5, rounds=3), fresh=2).load_state_dict(
        {**_replay_state(fresh=2, rounds=2), "seen": torch.tensor(1)}),
    "dist-shard-index": lambda: distributed.shard(regression_task(tasks=4), 2, 2),
    "dist-local-rank": "env",
    "dist-timeout": "env",
    "smac-flag": lambda: _smac().smac_target(lambda trial: 0.0, maximize="no"),
    "smac-eta": lambda: _smac().run_smac(lambda trial, steps=5: 0.0, {}, budget_steps=10, max_steps=9, min_steps=1,
                                         multi_fidelity=True, eta=1),
    "smac-non-finite": lambda: _smac().smac_target(lambda trial: float("nan"))({}),
    "smac-failed-value": lambda: _smac().smac_target(lambda trial: 0.0, failed_value=float("nan")),
    "darts-architecture-input": lambda: mutate_architecture(["zero", "skip", "skip", "conv3x3", "skip", "skip"]),
    "darts-architecture-type": lambda: mutate_architecture("conv3x3"),
    "darts-fitness-callable": lambda: regularized_evolution("accuracy", cycles=1, population_size=2, sample_size=1),
    "darts-fitness-nan": lambda: regularized_evolution(lambda a: float("nan"), cycles=1, population_size=2,
                                                       sample_size=1),
    "darts-fitness-type": lambda: regularized_evolution(lambda a: "high", cycles=1, population_size=2,
                                                        sample_size=1),
    "hpo-name": lambda tmp: open_study(3, f"sqlite:///{tmp / 'studies.db'}"),
}


ENVIRONMENT: dict[str, tuple[str, str, Callable]] = {
    "quick-mode-env": (QUICK_ENV_VAR, "maybe", quick_mode),
    "dist-local-rank": ("LOCAL_RANK", "x", distributed.local_rank),
    "dist-timeout": (distributed.TIMEOUT_ENV_VAR, "inf", distributed.timeout),
}
"""Rows whose bad input is an environment variable: (variable, bad value, the function that reads it)."""


def run_trigger(ident: str, tmp_path: Path, monkeypatch) -> list[tuple[str, Callable[[], object]]]:
    """``[(label, zero-argument call)]``: one call, or one per learner for per-learner rows."""
    trigger = TRIGGERS[ident]
    if trigger == "env":
        variable, value, read = ENVIRONMENT[ident]
        monkeypatch.setenv(variable, value)
        return [("", read)]
    if getattr(trigger, "per_learner", False):
        calls = []
        for name, (make, shape) in LEARNERS.items():
            calls.append((name, lambda make=make, shape=shape: trigger(make(), shape)))
        return calls
    if trigger.__code__.co_argcount == 1:
        return [("", lambda: trigger(tmp_path))]
    return [("", trigger)]


def test_learners_leave_the_checked_methods_to_the_base_class():
    """Learners write the hooks (``_adapt``, ...), so the public methods always check their inputs."""
    classes = [type(make()) for make, _ in LEARNERS.values()]
    for cls in classes:
        for klass in cls.__mro__[: cls.__mro__.index(MetaLearner)]:
            overridden = {"adapt", "predict", "forward", "meta_loss"} & set(vars(klass))
            assert not overridden, f"{klass.__name__} overrides {sorted(overridden)}: write the hook instead"


def test_learners_cover_every_learner_the_package_exports():
    """The per-learner rows, the property test (test_malformed_tasks.py) and the thread-safety test
    (test_thread_safety.py) run on LEARNERS: a learner missing from it would go unchecked."""
    exported = {name for name in learners_module.__all__
                if isinstance(obj := getattr(learners_module, name), type) and issubclass(obj, MetaLearner)}
    assert sorted(exported - set(LEARNER_BASES)) == sorted(LEARNERS)
    assert all(type(make()).__name__ == name for name, (make, _) in LEARNERS.items())


def test_table_and_triggers_match():
    ids = [row["id"] for row in ROWS]
    assert len(ids) == len(set(ids)), "duplicate IDs in docs/validation.md"
    assert sorted(set(ids) - set(TRIGGERS)) == [], "rows without a trigger in this file"
    assert sorted(set(TRIGGERS) - set(ids)) == [], "triggers without a row in docs/validation.md"


def test_rows_name_the_argument_and_the_value():
    for row in ROWS:
        assert row["error"] in ERRORS, row["line"]
        assert len(row["fragments"]) >= 2, f"a row must name the argument and the value given: {row['line']}"


def test_per_learner_rows_say_so():
    for row in ROWS:
        runs_all = getattr(TRIGGERS.get(row["id"]), "per_learner", False)
        assert runs_all == row["function"].startswith("every learner"), row["line"]


@pytest.mark.parametrize("row", ROWS, ids=[row["id"] for row in ROWS])
def test_row(row, tmp_path, monkeypatch):
    torch.manual_seed(0)
    error = ERRORS[row["error"]]
    for label, call in run_trigger(row["id"], tmp_path, monkeypatch):
        with pytest.raises(error, match=re.escape(row["fragments"][0])) as raised:
            call()
        assert type(raised.value) is error, f"{label}: {raised.value!r}"
        message = str(raised.value)
        for fragment in row["fragments"]:
            assert fragment in message, f"{label}: {fragment!r} not in {message!r}"
