"""A memory-augmented neural network (MANN, Santoro et al. 2016): an LSTM controller with an external
memory read by content and written by least-recently-used access (LRUA). Chapter 5 derives it.

The episode is one stream with **offset labels**: step ``t`` is fed ``[enc(x_t) | onehot(y_{t-1})]``
(zeros at ``t = 1``) and predicts ``y_t``, so every step is a prediction and an example's own label
arrives one step after it (:func:`~mlhelpers.sequences.offset_labels`). The memory, per task::

    read     w^r_t(i) = softmax_i cos(k_t, M_t(i)),          r_t = sum_i w^r_t(i) M_t(i)
    usage    w^u_t = gamma w^u_{t-1} + w^r_t + w^w_t
    write    w^w_t = sigmoid(alpha) w^r_{t-1} + (1 - sigmoid(alpha)) w^lu_{t-1}
             M_t(i) = M_{t-1}(i) + w^w_t(i) k_t   (the least-used slots zeroed first)

``w^lu`` marks the ``n`` least-used slots (``n`` = number of read heads). The write at step ``t`` goes
to where the previous step read (refresh a memory) or to a slot nobody has used lately (a new one).

The support/query interface: :meth:`MANN.adapt` feeds the support set as a stream (in the order
given) and returns the :class:`MemoryState` after it; :meth:`MANN.predict` runs one more step per
query from that state, fed the query and the last support label. Each query gets its own copy of
the state, so it sees the support stream, never the other queries and never its own label.
:meth:`MANN.stream` gives the prediction at every step (the paper's layout, for accuracy by instance).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlhelpers.learners.base import MetaLearner, _shape_errors_named, task_loss
from mlhelpers.sequences import offset_labels
from mlhelpers.tasks import Task
from mlhelpers.validation import (
    check_bool,
    check_finite,
    check_floating,
    check_labels,
    check_module,
    check_number,
    check_positive_int,
    check_support,
    check_tensor,
)


@dataclass
class MemoryState:
    """The recurrent state of a :class:`MANN` after some steps of a stream, for ``B`` streams.

    With ``external_memory=False`` the memory fields are ``[B, 0, ...]`` placeholders.
    """

    memory: Tensor
    """``[B, slots, width]`` the external memory ``M_t``."""
    usage: Tensor
    """``[B, slots]`` usage weights ``w^u_t``."""
    read_weights: Tensor
    """``[B, heads, slots]`` the last read weights ``w^r_t`` (the next write may go where they point)."""
    reads: Tensor
    """``[B, heads * width]`` the last read vectors ``r_t`` (fed to the controller at the next step)."""
    hidden: Tensor
    """``[B, controller]`` LSTM hidden state."""
    cell: Tensor
    """``[B, controller]`` LSTM cell state."""
    previous_label: Tensor
    """``[B, n_way]`` one-hot label the next step is fed (that of the last example seen; zeros at the start)."""

    def repeat_interleave(self, repeats: int) -> MemoryState:
        """Each stream's state ``repeats`` times in a row: ``[B * repeats, ...]`` (one copy per query)."""
        return MemoryState(*(getattr(self, f.name).repeat_interleave(repeats, dim=0) for f in fields(self)))

    @property
    def num_streams(self) -> int:
        return self.hidden.shape[0]


@dataclass
class StreamTrace:
    """What :meth:`MANN.stream` records with ``record=True``, for ``T`` steps."""

    logits: Tensor
    """``[tasks, T, n_way]`` the prediction of ``y_t`` at every step."""
    read_weights: Tensor
    """``[tasks, T, heads, slots]``."""
    write_weights: Tensor
    """``[tasks, T, heads, slots]``."""
    usage: Tensor
    """``[tasks, T, slots]``."""


def cosine_read_weights(key: Tensor, memory: Tensor, strength: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """Read weights ``softmax_i cos(k_h, M(i))``: key ``[B, heads, width]``, memory ``[B, slots, width]``
    -> ``[B, heads, slots]``, each row summing to 1 (Santoro et al. 2016, content-based read).

    ``strength`` ``[B, heads]``: ``softmax_i(beta_h cos(k_h, M(i)))``, the key strength of the Neural
    Turing Machine (Graves et al. 2014); a cosine lies in ``[-1, 1]``, so without it the weights over
    many slots stay close to uniform.
    """
    similarity = F.normalize(key, dim=-1, eps=eps) @ F.normalize(memory, dim=-1, eps=eps).transpose(1, 2)
    if strength is not None:
        similarity = strength[..., None] * similarity
    return similarity.softmax(dim=-1)


def least_used_weights(usage: Tensor, n: int) -> Tensor:
    """The ``n`` least-used slots: usage ``[B, slots]`` -> ``[B, n, slots]``, row ``j`` one-hot at
    the ``j``-th smallest usage (ties: the lower slot index first).

    The paper's ``w^lu`` (1 where ``w^u(i) <= m(w^u, n)``, the ``n``-th smallest usage, else 0) is the
    sum of the rows; :class:`MANN` gives read head ``j`` row ``j``, so heads write to distinct slots.
    """
    order = torch.sort(usage, dim=-1, stable=True).indices[:, :n]  # [B, n]
    return F.one_hot(order, usage.shape[-1]).to(usage.dtype)


def write_weights(previous_read: Tensor, least_used: Tensor, gate: Tensor) -> Tensor:
    """LRUA write weights ``gate * w^r_{t-1} + (1 - gate) * w^lu_{t-1}``.

    ``previous_read`` and ``least_used`` ``[B, heads, slots]``; ``gate = sigmoid(alpha)``
    ``[B, heads]`` in ``[0, 1]``: 1 refreshes the slot read at the previous step, 0 writes to a
    least-used slot. Returns ``[B, heads, slots]``.
    """
    gate = gate[..., None]
    return gate * previous_read + (1 - gate) * least_used


def update_usage(usage: Tensor, read: Tensor, write: Tensor, gamma: float) -> Tensor:
    """``w^u_t = gamma * w^u_{t-1} + sum_heads w^r_t + sum_heads w^w_t``: ``[B, slots]``."""
    return gamma * usage + read.sum(dim=1) + write.sum(dim=1)


def instance_numbers(labels: Tensor) -> Tensor:
    """``[tasks, T]`` labels -> ``[tasks, T]``: 1 where a label appears for the first time in its
    stream, 2 the second time, ..."""
    check_tensor("labels", labels, dim=2)
    same = labels[:, :, None] == labels[:, None, :]  # [tasks, T, T]: same[t, s] = y_t == y_s
    earlier = torch.ones(labels.shape[1], labels.shape[1], dtype=torch.bool, device=labels.device).tril()
    return (same & earlier).sum(dim=-1)


def accuracy_by_instance(logits: Tensor, labels: Tensor, max_instance: int | None = None) -> Tensor:
    """Accuracy on the 1st, 2nd, ... presentation of each class in each stream: ``[tasks, max_instance]``.

    ``logits`` ``[tasks, T, n_way]`` (the prediction at every step, :meth:`MANN.stream` or
    :meth:`~mlhelpers.learners.incontext.InContextLearner.prefix_predictions`), ``labels``
    ``[tasks, T]``. Entry ``[e, i]`` is the fraction right among the steps of stream ``e`` that show
    a class for the ``(i + 1)``-th time; NaN if no class of stream ``e`` appears that often.
    Average over streams for the paper's table (Santoro et al. 2016, Table 1).
    """
    check_tensor("logits", logits, dim=3)
    check_tensor("labels", labels, dim=2)
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits must be [tasks, T, n_way] for labels [tasks, T] {tuple(labels.shape)}, "
                         f"got {tuple(logits.shape)}")
    check_floating("logits", logits)
    check_finite("logits", logits)  # NaN logits have an argmax: their "accuracy" would be a number
    check_labels("labels", labels, logits.shape[-1])
    instance = instance_numbers(labels)
    top = int(instance.max()) if max_instance is None else check_positive_int("max_instance", max_instance)
    correct = (logits.argmax(dim=-1) == labels).float()
    one_hot = F.one_hot((instance - 1).clamp(max=top), top + 1)[..., :top].float()  # [tasks, T, top]
    counts = one_hot.sum(dim=1)
    return (correct[..., None] * one_hot).sum(dim=1) / counts  # 0 / 0 = NaN where absent


class MANN(MetaLearner):
    """Santoro et al. (2016)'s memory-augmented network over streams with offset labels (Chapter 5).

    ``encoder`` (images -> ``in_features``; identity for vectors) -> controller LSTM fed
    ``[features | previous one-hot label | previous reads]`` -> keys and write gates per read head ->
    memory (module docstring) -> output layer on ``[hidden | reads]`` -> ``n_way`` logits.

    Args:
        in_features: features of one input vector, or of the ``encoder``'s output.
        n_way: classes (integer labels ``0 .. n_way - 1``; classification only).
        encoder: ``[batch, *x_shape] -> [batch, in_features]``; None: inputs are ``[tasks, n, in_features]``.
        controller: LSTM hidden units.
        slots, width: memory size (rows, and width of a row = of a key).
        heads: read heads (each also writes; ``n`` of ``w^lu``).
        gamma: usage decay.
        external_memory: False gives the baseline of the paper's table, an LSTM fed the same
            offset-label stream with no external memory.
        add_vector: write a separate vector ``a_t = tanh(W_a h_t)`` instead of the key ``k_t``
            (``M_t(i) = M_{t-1}(i) + w^w_t(i) a_t``), as the Neural Turing Machine and the public
            reimplementations of the MANN do; Santoro et al. write the key itself.
        key_strength: the controller also emits a key strength ``beta = 1 + softplus(.)`` per head
            and reads with ``softmax(beta cos)`` (as the Neural Turing Machine; not in Santoro et al.,
            whose reads are ``softmax(cos)``).
        loss_on_all_positions: :meth:`meta_loss` scores the prediction at every support step too
            (the paper trains on every step), averaged with the query losses.
    """

    needs_grad_to_adapt = False

    def __init__(
        self,
        in_features: int,
        n_way: int,
        *,
        encoder: nn.Module | None = None,
        controller: int = 200,
        slots: int = 128,
        width: int = 40,
        heads: int = 4,
        gamma: float = 0.95,
        external_memory: bool = True,
        add_vector: bool = False,
        key_strength: bool = False,
        loss_on_all_positions: bool = True,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.n_way = check_positive_int("n_way", n_way)
        self.controller_size = check_positive_int("controller", controller)
        self.external_memory = check_bool("external_memory", external_memory)
        self.slots = check_positive_int("slots", slots) if external_memory else 0
        self.width = check_positive_int("width", width) if external_memory else 0
        self.heads = check_positive_int("heads", heads) if external_memory else 0
        if self.heads > self.slots and external_memory:
            raise ValueError(f"heads={heads} read heads need at least as many slots, got slots={slots}")
        gamma = check_number("gamma", gamma, minimum=0.0)
        if gamma > 1:
            raise ValueError(f"gamma must be a usage decay in [0, 1], got {gamma!r}")
        self.gamma = gamma
        self.loss_on_all_positions = check_bool("loss_on_all_positions", loss_on_all_positions)
        self.key_strength = check_bool("key_strength", key_strength) and self.external_memory
        self.add_vector = check_bool("add_vector", add_vector) and self.external_memory
        self.encoder = check_module("encoder", encoder) if encoder is not None else nn.Identity()
        reads = self.heads * self.width
        self.lstm = nn.LSTMCell(in_features + n_way + reads, controller)
        if external_memory:
            self.key = nn.Linear(controller, reads)
            self.gate = nn.Linear(controller, self.heads)
            if self.key_strength:
                self.strength = nn.Linear(controller, self.heads)
            if self.add_vector:
                self.add = nn.Linear(controller, reads)
        self.out = nn.Linear(controller + reads, n_way)

    # --- the memory, one step at a time -----------------------------------------------------

    def initial_state(self, streams: int) -> MemoryState:
        """The state before the first step: memory ``1e-6`` everywhere (all rows alike, so the first
        reads are uniform), no usage, no reads, zero controller state and no previous label."""
        p = self.out.weight
        zeros = lambda *shape: torch.zeros(*shape, dtype=p.dtype, device=p.device)  # noqa: E731
        return MemoryState(
            memory=torch.full((streams, self.slots, self.width), 1e-6, dtype=p.dtype, device=p.device),
            usage=zeros(streams, self.slots), read_weights=zeros(streams, self.heads, self.slots),
            reads=zeros(streams, self.heads * self.width), hidden=zeros(streams, self.controller_size),
            cell=zeros(streams, self.controller_size), previous_label=zeros(streams, self.n_way))

    def step(self, features: Tensor, state: MemoryState) -> tuple[Tensor, MemoryState, Tensor]:
        """One step: ``features`` ``[B, in_features]`` with ``state.previous_label``.

        Returns the logits ``[B, n_way]``, the new state (its ``previous_label`` still the old one;
        the caller sets the label of this step's example) and the write weights ``[B, heads, slots]``.
        """
        inputs = torch.cat([features, state.previous_label, state.reads], dim=-1)
        hidden, cell = self.lstm(inputs, (state.hidden, state.cell))
        if not self.external_memory:
            new = MemoryState(state.memory, state.usage, state.read_weights, state.reads, hidden, cell,
                              state.previous_label)
            return self.out(torch.cat([hidden, state.reads], dim=-1)), new, state.read_weights
        key = torch.tanh(self.key(hidden)).unflatten(-1, (self.heads, self.width))  # [B, heads, width]
        gate = torch.sigmoid(self.gate(hidden))  # [B, heads]
        least_used = least_used_weights(state.usage, self.heads)  # from w^u_{t-1}
        write = write_weights(state.read_weights, least_used, gate)
        erase = least_used.sum(dim=1).clamp(max=1)[..., None]  # [B, slots, 1]: the least-used slots
        content = torch.tanh(self.add(hidden)).unflatten(-1, (self.heads, self.width)) if self.add_vector else key
        memory = state.memory * (1 - erase) + write.transpose(1, 2) @ content  # [B, slots, width]
        strength = 1 + F.softplus(self.strength(hidden)) if self.key_strength else None  # [B, heads]
        read = cosine_read_weights(key, memory, strength)
        reads = (read @ memory).flatten(1)  # [B, heads * width]
        usage = update_usage(state.usage, read, write, self.gamma)
        new = MemoryState(memory, usage, read, reads, hidden, cell, state.previous_label)
        return self.out(torch.cat([hidden, reads], dim=-1)), new, write

    # --- streams ------------------------------------------------------------------------------

    def encode(self, x: Tensor, name: str) -> Tensor:
        """Inputs ``[tasks, n, *x_shape]`` -> features ``[tasks, n, in_features]``."""
        if x.dim() < 3:
            raise ValueError(f"{name} must be [tasks, n, *x_shape], got shape {tuple(x.shape)}")
        if isinstance(self.encoder, nn.Identity):
            if x.dim() != 3 or x.shape[-1] != self.in_features:
                raise ValueError(f"{name} must be [tasks, n, in_features={self.in_features}] vectors (no encoder "
                                 f"was given), got {tuple(x.shape)}")
            return x
        features = self.encoder(x.flatten(0, 1)).flatten(1).unflatten(0, x.shape[:2])
        if features.shape[-1] != self.in_features:
            raise ValueError(f"the encoder turns {name} {tuple(x.shape)} into {features.shape[-1]} features "
                             f"but in_features={self.in_features}")
        return features

    def _labels(self, y: Tensor, name: str, like: Tensor) -> Tensor:
        if y.is_floating_point():
            raise TypeError(f"{name} must hold integer class labels (MANN classifies), got dtype {y.dtype}")
        if y.dim() != 2 or y.shape != like.shape[:2]:
            raise ValueError(f"{name} must have shape {tuple(like.shape[:2])} to match the inputs, "
                             f"got {tuple(y.shape)}")
        return check_labels(name, y, self.n_way).long()

    def _run(self, support_x: Tensor, support_y: Tensor, record: bool = False):
        """Feed the support stream; return (logits [T, n, n_way], state after it, trace or None)."""
        labels = self._labels(support_y, "support_y", support_x)
        features = self.encode(support_x, "support_x")
        previous = offset_labels(labels, self.n_way).to(features.dtype)  # [tasks, T, n_way]
        state = self.initial_state(features.shape[0])
        logits, reads, writes, usages = [], [], [], []
        for t in range(features.shape[1]):
            state.previous_label = previous[:, t]
            out, state, write = self.step(features[:, t], state)
            logits.append(out)
            if record:
                reads.append(state.read_weights)
                writes.append(write)
                usages.append(state.usage)
        state.previous_label = F.one_hot(labels[:, -1], self.n_way).to(features.dtype)
        trace = None
        if record:
            trace = StreamTrace(torch.stack(logits, 1), torch.stack(reads, 1), torch.stack(writes, 1),
                                torch.stack(usages, 1))
        return torch.stack(logits, 1), state, trace

    def stream(self, support_x: Tensor, support_y: Tensor, *, record: bool = False) -> Tensor | StreamTrace:
        """The paper's episode: predictions at every step of the stream ``support_x`` ``[tasks, T, ...]``
        with offset labels from ``support_y`` ``[tasks, T]``: ``[tasks, T, n_way]``, row ``t``
        predicting ``support_y[:, t]`` from the examples before it. ``record=True`` returns a
        :class:`StreamTrace` with the read and write weights and the usage at every step.
        """
        self._check_device("support_x", support_x)
        check_support(support_x, support_y)
        self._check_dtype(support_x=support_x, support_y=support_y)
        with _shape_errors_named(support_x=support_x):
            logits, _, trace = self._run(support_x, support_y, record=record)
        return trace if record else logits

    # --- the MetaLearner hooks ----------------------------------------------------------------

    def _adapt(self, support_x: Tensor, support_y: Tensor) -> MemoryState:
        """Feed the support set as a stream with offset labels; the state after it."""
        return self._run(support_x, support_y)[1]

    def _predict(self, adapted: MemoryState, query_x: Tensor) -> Tensor:
        """One step per query from the adapted state (fed the last support label): ``[tasks, n_query, n_way]``."""
        if not isinstance(adapted, MemoryState):
            raise TypeError(f"adapted must be the MemoryState that MANN.adapt returned, got {type(adapted).__name__}")
        tasks, n_query = query_x.shape[:2]
        if adapted.num_streams != tasks:
            raise ValueError(f"adapted holds the state of {adapted.num_streams} tasks but query_x holds {tasks} "
                             "(predict needs the state adapt returned for the same tasks)")
        features = self.encode(query_x, "query_x").flatten(0, 1)  # [tasks * n_query, F], task-major
        logits, _, _ = self.step(features, adapted.repeat_interleave(n_query))
        return logits.unflatten(0, (tasks, n_query))

    def _meta_loss(self, task: Task) -> Tensor:
        """Query loss after the support stream; with ``loss_on_all_positions`` also the loss at every
        support step (Santoro et al. train on every step of the episode)."""
        support_logits, state, _ = self._run(task.support_x, task.support_y)
        query = self._predict(state, task.query_x)
        if not self.loss_on_all_positions:
            return task_loss(query, task.query_y)
        return task_loss(torch.cat([support_logits, query], dim=1), torch.cat([task.support_y, task.query_y], dim=1))
