"""Evaluating a meta-learner the way few-shot papers report it: mean over episodes ± 95% CI. Chapter 1.

:func:`evaluate` adapts on each episode's support set, scores the queries with
:func:`~mlhelpers.learners.base.task_metric` (accuracy or MSE) and summarises with
:func:`mean_confidence_interval`: ``print(evaluate(learner, test_sampler, num_episodes=600))``
shows ``97.31% ± 0.42% (600 episodes)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm import tqdm  # text bars: readable live and in stored notebook outputs

from mlhelpers.config import module_device
from mlhelpers.learners.base import task_metric
from mlhelpers.validation import INTEGER_LABEL_DTYPES, NonFiniteError, check_finite, check_positive_int


def mean_confidence_interval(values: Tensor | Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the normal-approximation confidence interval of ``values`` ``[n]``.

    The half-width is ``z * std / sqrt(n)`` with the sample standard deviation (``ddof=1``) and
    ``z = 1.96`` for ``confidence=0.95`` (the convention of few-shot papers), otherwise the
    standard normal quantile ``Phi^-1((1 + confidence) / 2)``. With a single value the half-width
    is ``nan``: one episode says nothing about the spread.
    """
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be a number strictly between 0 and 1, got {confidence!r}")
    x = torch.as_tensor(values, dtype=torch.float64).detach().cpu().flatten()
    if x.numel() == 0:
        raise ValueError("values must hold at least one number, got an empty sequence")
    check_finite("values", x)
    mean = float(x.mean())
    n = x.numel()
    if n < 2:
        return mean, math.nan
    z = 1.96 if confidence == 0.95 else _normal_quantile(0.5 + confidence / 2)
    return mean, z * float(x.std(correction=1)) / math.sqrt(n)


def _normal_quantile(p: float) -> float:
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    return float(normal.icdf(torch.tensor(p, dtype=torch.float64)))


@dataclass
class EvalResult:
    """Per-episode metrics of an evaluation and their summary.

    Attributes:
        mean: mean metric over episodes (accuracy as a fraction in [0, 1], or MSE).
        ci95: half-width of the 95% confidence interval of the mean.
        values: ``[num_episodes]`` per-episode metric, float64 on the CPU.
        metric: ``"accuracy"`` or ``"mse"``.
    """

    mean: float
    ci95: float
    values: Tensor
    metric: str

    @property
    def num_episodes(self) -> int:
        return len(self.values)

    def __str__(self) -> str:
        n = self.num_episodes
        episodes = f"({n} episode{'s' if n != 1 else ''})"
        if self.metric == "accuracy":
            return f"{100 * self.mean:.2f}% ± {100 * self.ci95:.2f}% {episodes}"
        return f"{self.mean:.3g} ± {self.ci95:.2g} {self.metric.upper()} {episodes}"


def evaluate(
    learner: nn.Module,
    sampler,
    num_episodes: int = 600,
    batch_size: int = 20,
    progress: bool = False,
) -> EvalResult:
    """Mean query metric of ``learner`` over ``num_episodes`` episodes drawn from ``sampler``.

    Episodes are drawn ``batch_size`` at a time (the last batch holds the remainder). The learner is
    put in ``eval()`` mode and its previous mode is restored afterwards. Autograd stays on, because
    gradient-based learners (MAML) differentiate inside ``adapt``; outputs are detached. A learner
    that sets ``needs_grad_to_adapt = False`` (metric learners) is run under ``torch.no_grad()``
    to save memory. Outputs or a metric holding NaN or infinity raise a
    :class:`~mlhelpers.validation.NonFiniteError` naming the episode.
    """
    check_positive_int("num_episodes", num_episodes)
    check_positive_int("batch_size", batch_size)
    if not isinstance(learner, nn.Module) or not callable(getattr(learner, "adapt", None)):
        raise TypeError(
            f"learner must be a MetaLearner (an nn.Module with adapt/predict), got {type(learner).__name__}"
        )
    if not callable(getattr(sampler, "sample", None)):
        raise TypeError(
            f"sampler must be a TaskSampler (with a sample(num_tasks) method), got {type(sampler).__name__}"
        )
    device = module_device(learner)
    grad = torch.enable_grad() if learner.needs_grad_to_adapt else torch.no_grad()
    was_training = learner.training
    learner.eval()
    values, metric = [], None
    try:
        with grad, tqdm(total=num_episodes, desc="evaluate", unit="episode", disable=not progress, leave=False) as bar:
            done = 0
            while done < num_episodes:
                size = min(batch_size, num_episodes - done)
                batch = sampler.sample(size)
                if device is not None and batch.device != device:
                    batch = batch.to(device)
                outputs = learner(batch).detach()
                _check_finite_outputs(outputs, done)
                value = task_metric(outputs, batch.query_y).detach().to("cpu", torch.float64)
                if not bool(torch.isfinite(value).all()):
                    episode = done + int(torch.nonzero(~torch.isfinite(value))[0])
                    raise NonFiniteError(
                        f"evaluate: non-finite query metric ({float(value[episode - done])}) on episode "
                        f"{episode}: the learner's outputs overflow"
                    )
                values.append(value)
                metric = "accuracy" if batch.query_y.dtype in INTEGER_LABEL_DTYPES else "mse"
                done += size
                bar.update(size)
    finally:
        learner.train(was_training)
    all_values = torch.cat(values)
    mean, ci95 = mean_confidence_interval(all_values)
    return EvalResult(mean=mean, ci95=ci95, values=all_values, metric=metric)


def _check_finite_outputs(outputs: Tensor, first_episode: int) -> None:
    """A :class:`~mlhelpers.validation.NonFiniteError` naming the first episode whose outputs
    ``[tasks, n_query, ...]`` hold NaN or infinity (an accuracy of such outputs would look valid)."""
    bad = ~torch.isfinite(outputs).flatten(1).all(dim=1)
    if bool(bad.any()):
        episode = first_episode + int(torch.nonzero(bad)[0])
        raise NonFiniteError(
            f"evaluate: non-finite outputs on episode {episode}: the learner's outputs hold NaN or infinity "
            "(a diverged inner loop or training run)"
        )
