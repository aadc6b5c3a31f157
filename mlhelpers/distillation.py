"""Distilling an ensemble of ProtoNets into one network (Hinton et al. 2015). Chapter 4.

The shipped learner averages the class probabilities of three networks, each over five shifted
views of every image: fifteen forward passes per image. A student network trained to give the
ensemble's probabilities on training episodes classifies with one. :class:`Distillation` is the
module :func:`~mlhelpers.training.meta_train` trains (through :func:`mlhelpers.recipe.train_member`
with a ``teacher``): its ``meta_loss`` is the KL divergence from the teacher's query probabilities
to the student's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mlhelpers.learners.ensemble import EnsembleProtoNet
from mlhelpers.learners.protonet import ProtoNet
from mlhelpers.tasks import Task
from mlhelpers.validation import check_module


class Distillation(nn.Module):
    """A ``student`` ProtoNet trained on the soft labels of a fixed ``teacher`` ensemble.

    :meth:`meta_loss` of a batch of tasks is the mean over query images of
    ``KL(teacher probabilities || student probabilities)`` over the task's classes. The teacher
    stays in eval mode and is never updated (its parameters are frozen here). Called on a task it
    is the student, so validation during training and :func:`~mlhelpers.evaluation.evaluate` score
    the student.
    """

    needs_grad_to_adapt = False

    def __init__(self, student: ProtoNet, teacher: EnsembleProtoNet) -> None:
        super().__init__()
        if not isinstance(student, ProtoNet):
            raise TypeError(f"student must be a ProtoNet, got {type(student).__name__}")
        if not isinstance(teacher, EnsembleProtoNet):
            raise TypeError(f"teacher must be an EnsembleProtoNet, got {type(teacher).__name__}")
        self.student = student
        self.teacher = check_module("teacher", teacher).requires_grad_(False).eval()

    def train(self, mode: bool = True) -> Distillation:
        super().train(mode)
        self.teacher.eval()  # the teacher's batch statistics are those it was trained with
        return self

    def forward(self, task: Task) -> Tensor:
        """The student's logits ``[tasks, n_query, n_way]``."""
        return self.student(task)

    def meta_loss(self, task: Task) -> Tensor:
        """Scalar: KL divergence from the teacher's to the student's query class probabilities."""
        with torch.no_grad():
            target = self.teacher(task)  # log mean probabilities [tasks, n_query, n_way]
        student = self.student(task).log_softmax(-1)
        return (target.exp() * (target - student)).sum(-1).mean()
