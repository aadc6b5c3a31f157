"""Meta-learners sharing one interface: :class:`~mlhelpers.learners.base.MetaLearner`.

Gradient-based (Chapters 2-3): MAML, MetaSGD, ANIL, Reptile. Metric-based (Chapter 4): ProtoNet,
MatchingNet, RelationNet, SiameseNet, the pretrained NearestCentroid baseline, and EnsembleProtoNet (the shipped
learner of :mod:`mlhelpers.pretrained`); ProtoMAML joins the two families. In-context (Chapter 5):
InContextLearner on a CausalTransformer.

Threads: every learner may be called (``forward``, ``adapt``, ``predict``, ``meta_loss``) from several
threads at once and gives each call its own answer. The metric and in-context learners keep no
state between calls; the gradient-based ones run ``functional_call`` on a module of the calling
thread (:func:`~mlhelpers.learners.functional.module_for_this_thread`; ``tests/test_thread_safety.py``).
Not thread-safe anywhere: training one learner from several threads (the optimizer steps race),
and BatchNorm running statistics updated in training mode.
"""

from mlhelpers.learners.base import MetaLearner, task_loss, task_metric
from mlhelpers.learners.baseline import NearestCentroid, feature_mean
from mlhelpers.learners.ensemble import EnsembleProtoNet
from mlhelpers.learners.incontext import CausalTransformer, InContextLearner, InContextState
from mlhelpers.learners.maml import ANIL, MAML, GradientLearner, MetaSGD
from mlhelpers.learners.matching import MatchingNet, support_one_hot
from mlhelpers.learners.protomaml import ProtoMAML, prototype_head
from mlhelpers.learners.protonet import ProtoNet, class_prototypes, refine_prototypes
from mlhelpers.learners.relation import RelationNet, build_relation_module, relation_backbone
from mlhelpers.learners.reptile import Reptile
from mlhelpers.learners.siamese import SiameseNet

__all__ = [
    "ANIL",
    "CausalTransformer",
    "EnsembleProtoNet",
    "GradientLearner",
    "InContextLearner",
    "InContextState",
    "MAML",
    "MatchingNet",
    "MetaLearner",
    "MetaSGD",
    "NearestCentroid",
    "ProtoMAML",
    "ProtoNet",
    "RelationNet",
    "Reptile",
    "SiameseNet",
    "build_relation_module",
    "class_prototypes",
    "feature_mean",
    "prototype_head",
    "refine_prototypes",
    "relation_backbone",
    "support_one_hot",
    "task_loss",
    "task_metric",
]
