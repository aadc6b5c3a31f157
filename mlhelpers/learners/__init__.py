"""Meta-learners sharing one interface: :class:`~mlhelpers.learners.base.MetaLearner`."""

from mlhelpers.learners.base import MetaLearner, task_loss, task_metric
from mlhelpers.learners.baseline import NearestCentroid, feature_mean, pretrain_classifier
from mlhelpers.learners.matching import MatchingNet, support_one_hot
from mlhelpers.learners.maml import ANIL, MAML, GradientLearner, MetaSGD
from mlhelpers.learners.protonet import ProtoNet, class_prototypes
from mlhelpers.learners.relation import RelationNet, build_relation_module, relation_backbone
from mlhelpers.learners.reptile import Reptile

__all__ = ["MetaLearner", "ProtoNet", "class_prototypes", "task_loss", "task_metric"]
__all__ += ["MatchingNet", "NearestCentroid", "RelationNet", "build_relation_module", "feature_mean", "pretrain_classifier", "relation_backbone", "support_one_hot"]
__all__ += ["ANIL", "GradientLearner", "MAML", "MetaSGD", "Reptile"]
