"""Meta-learners sharing one interface: :class:`~mlhelpers.learners.base.MetaLearner`.

Gradient-based (Chapters 2-3): MAML, MetaSGD, ANIL, Reptile. Conditioned on the task (Chapter 3):
CAVIA (a context vector adapted by gradient steps) and FiLMLearner (a task embedding, no steps).
Metric-based (Chapter 4): ProtoNet, MatchingNet, RelationNet, SiameseNet, the pretrained
NearestCentroid baseline, and EnsembleProtoNet (the shipped learner of :mod:`mlhelpers.pretrained`);
ProtoMAML joins the two families. In-context (Chapter 5):
InContextLearner on a CausalTransformer, and MANN, the memory-augmented network of Santoro et al.
(2016) with its memory functions.

Threads: every learner may be called (``forward``, ``adapt``, ``predict``, ``meta_loss``) from several
threads at once and gives each call its own answer. The metric and in-context learners keep no
state between calls (nor do CAVIA and FiLMLearner, which never swap the network's weights); the
gradient-based ones run ``functional_call`` on a module of the calling
thread (:func:`~mlhelpers.learners.functional.module_for_this_thread`; ``tests/test_thread_safety.py``).
Not thread-safe anywhere: training one learner from several threads (the optimizer steps race),
and BatchNorm running statistics updated in training mode.
"""

from mlhelpers.learners.base import MetaLearner, task_loss, task_metric
from mlhelpers.learners.baseline import NearestCentroid, feature_mean
from mlhelpers.learners.conditioning import CAVIA, FiLM, FiLMLearner
from mlhelpers.learners.ensemble import EnsembleProtoNet
from mlhelpers.learners.incontext import CausalTransformer, InContextLearner, InContextState
from mlhelpers.learners.maml import ANIL, MAML, GradientLearner, MetaSGD
from mlhelpers.learners.mann import (
    MANN,
    MemoryState,
    StreamTrace,
    accuracy_by_instance,
    cosine_read_weights,
    instance_numbers,
    least_used_weights,
    update_usage,
    write_weights,
)
from mlhelpers.learners.matching import MatchingNet, support_one_hot
from mlhelpers.learners.protomaml import ProtoMAML, prototype_head
from mlhelpers.learners.protonet import ProtoNet, class_prototypes, refine_prototypes
from mlhelpers.learners.relation import RelationNet, build_relation_module, relation_backbone
from mlhelpers.learners.reptile import Reptile
from mlhelpers.learners.siamese import SiameseNet

__all__ = [
    "ANIL",
    "CAVIA",
    "CausalTransformer",
    "EnsembleProtoNet",
    "FiLM",
    "FiLMLearner",
    "GradientLearner",
    "InContextLearner",
    "InContextState",
    "MAML",
    "MANN",
    "MatchingNet",
    "MemoryState",
    "MetaLearner",
    "MetaSGD",
    "NearestCentroid",
    "ProtoMAML",
    "ProtoNet",
    "RelationNet",
    "Reptile",
    "StreamTrace",
    "accuracy_by_instance",
    "SiameseNet",
    "build_relation_module",
    "class_prototypes",
    "cosine_read_weights",
    "feature_mean",
    "instance_numbers",
    "least_used_weights",
    "prototype_head",
    "refine_prototypes",
    "relation_backbone",
    "support_one_hot",
    "task_loss",
    "task_metric",
    "update_usage",
    "write_weights",
]
