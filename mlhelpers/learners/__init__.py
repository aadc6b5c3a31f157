"""Meta-learners sharing one interface: :class:`~mlhelpers.learners.base.MetaLearner`."""

from mlhelpers.learners.base import MetaLearner, task_loss, task_metric
from mlhelpers.learners.protonet import ProtoNet, class_prototypes

__all__ = ["MetaLearner", "ProtoNet", "class_prototypes", "task_loss", "task_metric"]
