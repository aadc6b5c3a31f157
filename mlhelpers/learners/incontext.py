"""In-context learning: a small causal transformer that adapts by reading, not by gradient steps. Chapter 5.

The support set and a query become one token sequence (:mod:`mlhelpers.sequences`) and the output
at the query's ``x`` token is the prediction: nothing is fitted per task, the "learning" happens in
the forward pass of weights meta-trained on many tasks (Garg et al. 2022).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from mlhelpers.config import module_device
from mlhelpers.learners.base import MetaLearner, task_loss
from mlhelpers.sequences import (
    input_tokens,
    label_tokens,
    paired_query_sequences,
    prefix_sequence,
    query_sequences,
    token_width,
    x_positions,
)
from mlhelpers.tasks import Task, check_task
from mlhelpers.validation import check_bool, check_number, check_positive_int, check_tensor, describe


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position ``i`` attends only to positions ``j <= i``.

    ``[batch, L, d_model] -> [batch, L, d_model]``. The causal mask is explicit: scores of future
    positions are set to ``-inf`` before the softmax, so they get weight exactly 0.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor) -> Tensor:
        batch, length, d_model = h.shape
        head_dim = d_model // self.n_heads
        # [batch, L, 3 * d_model] -> three tensors [batch, heads, L, head_dim]
        q, k, v = self.qkv(h).view(batch, length, 3, self.n_heads, head_dim).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)  # [batch, heads, L, L]
        future = torch.ones(length, length, dtype=torch.bool, device=h.device).triu(diagonal=1)
        scores = scores.masked_fill(future, float("-inf"))
        weights = self.dropout(scores.softmax(dim=-1))
        mixed = (weights @ v).transpose(1, 2).reshape(batch, length, d_model)
        return self.out(mixed)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: ``h + attention(LN(h))``, then ``h + MLP(LN(h))`` (GELU MLP)."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attention = CausalSelfAttention(d_model, n_heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor) -> Tensor:
        h = h + self.dropout(self.attention(self.norm1(h)))
        return h + self.dropout(self.mlp(self.norm2(h)))


class CausalTransformer(nn.Module):
    """A GPT-style decoder: learned positional embeddings, pre-LN causal blocks, a final LayerNorm.

    ``[batch, L, d_model]`` embedded tokens -> ``[batch, L, d_model]``, ``L <= max_len``; the output
    at position ``i`` depends only on tokens ``0 .. i``.

    Args:
        d_model: width of the residual stream.
        n_layers: number of blocks.
        n_heads: attention heads (must divide ``d_model``).
        d_ff: hidden width of each block's MLP (None: ``4 * d_model``).
        max_len: longest sequence (number of learned positional embeddings).
        dropout: on attention weights and on each residual branch.
    """

    def __init__(
        self,
        d_model: int = 64,
        n_layers: int = 3,
        n_heads: int = 4,
        d_ff: int | None = None,
        max_len: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.d_model = check_positive_int("d_model", d_model)
        check_positive_int("n_layers", n_layers)
        check_positive_int("n_heads", n_heads)
        d_ff = 4 * d_model if d_ff is None else check_positive_int("d_ff", d_ff)
        self.max_len = check_positive_int("max_len", max_len)
        if check_number("dropout", dropout, minimum=0.0) >= 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.position = nn.Embedding(max_len, d_model)
        nn.init.normal_(self.position.weight, std=0.02)
        self.blocks = nn.ModuleList(TransformerBlock(d_model, n_heads, d_ff, dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tokens: Tensor) -> Tensor:
        check_tensor("tokens", tokens)
        if tokens.dim() != 3 or tokens.shape[-1] != self.d_model:
            raise ValueError(f"tokens must be [batch, length, d_model={self.d_model}], got shape {tuple(tokens.shape)}")
        length = tokens.shape[1]
        if length > self.max_len:
            raise ValueError(f"a sequence of {length} tokens is longer than max_len={self.max_len}")
        h = tokens + self.position(torch.arange(length, device=tokens.device))
        for block in self.blocks:
            h = block(h)
        return self.norm(h)


class InContextState(NamedTuple):
    """What :meth:`InContextLearner.adapt` returns: the support set as tokens, nothing fitted."""

    x_tokens: Tensor
    """``[tasks, k, W]`` support input tokens (after the encoder, zero-padded to the token width)."""
    y_tokens: Tensor
    """``[tasks, k, W]`` support label tokens."""


class InContextLearner(MetaLearner):
    """A causal transformer reading ``x_1, y_1, ..., x_k, y_k, x_query`` (Garg et al. 2022).

    ``encoder`` (images -> features; identity for vectors) -> tokens of width ``W``
    (:mod:`mlhelpers.sequences`) -> ``read_in`` -> ``transformer`` -> ``read_out`` at the query's
    ``x`` token. :meth:`adapt` only encodes the support set; :meth:`predict` builds one sequence per
    query and returns ``[tasks, n_query, out]`` (regression outputs or ``n_way`` logits);
    :meth:`prefix_predictions` gives the in-context learning curve.

    Args:
        in_features: features of one input vector, or of the ``encoder``'s output.
        n_way: None for regression (float targets ``[tasks, n, out_features]``), else the number of
            classes (integer labels ``0 .. n_way - 1``).
        out_features: regression outputs (leave at 1 for classification).
        encoder: ``[batch, *x_shape] -> [batch, in_features]`` (e.g. :func:`~mlhelpers.models.conv4`
            without head); None: inputs are already ``[tasks, n, in_features]`` vectors.
        d_model, n_layers, n_heads, d_ff, max_len, dropout: of the :class:`CausalTransformer`
            (``max_len >= 2k + 1`` for ``k`` support examples).
        loss_on_all_positions: :meth:`meta_loss` also scores the prediction of every support label
            from the examples before it (Garg's objective), averaged with the query losses.
            Interleaved layout only.
        layout: ``"interleaved"`` (``2k + 1`` tokens) or ``"paired"`` (``[x_i | y_i]`` tokens, then
            ``[x_query | 0]``: ``k + 1`` tokens); see :mod:`mlhelpers.sequences`.
    """

    needs_grad_to_adapt = False

    def __init__(
        self,
        in_features: int,
        *,
        n_way: int | None = None,
        out_features: int = 1,
        encoder: nn.Module | None = None,
        d_model: int = 64,
        n_layers: int = 3,
        n_heads: int = 4,
        d_ff: int | None = None,
        max_len: int = 128,
        dropout: float = 0.0,
        loss_on_all_positions: bool = False,
        layout: str = "interleaved",
    ) -> None:
        super().__init__()
        if layout not in ("interleaved", "paired"):
            raise ValueError(f"layout must be 'interleaved' or 'paired', got {layout!r}")
        if layout == "paired" and check_bool("loss_on_all_positions", loss_on_all_positions):
            raise ValueError(
                "loss_on_all_positions needs layout='interleaved': a paired token holds its own label"
            )
        self.layout = layout
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        if n_way is not None:
            check_positive_int("n_way", n_way)
            if out_features != 1:
                raise ValueError(
                    f"out_features={out_features} is for regression; with n_way={n_way} the "
                    "outputs are the n_way logits, leave out_features at 1"
                )
        self.n_way = n_way
        self.width = token_width(in_features, n_way=n_way, y_features=out_features, paired=layout == "paired")
        self.encoder = encoder if encoder is not None else nn.Identity()
        self.read_in = nn.Linear(self.width, d_model)
        self.transformer = CausalTransformer(d_model, n_layers, n_heads, d_ff, max_len, dropout)
        self.read_out = nn.Linear(d_model, n_way if n_way is not None else out_features)
        self.loss_on_all_positions = bool(loss_on_all_positions)

    @property
    def max_len(self) -> int:
        return self.transformer.max_len

    @property
    def paired(self) -> bool:
        return self.layout == "paired"

    def encode(self, x: Tensor, name: str = "x") -> Tensor:
        """Inputs ``[tasks, n, *x_shape]`` -> input tokens ``[tasks, n, W]``."""
        check_tensor(name, x)
        if x.dim() < 3:
            raise ValueError(f"{name} must be [tasks, n, *x_shape], got shape {tuple(x.shape)}")
        if isinstance(self.encoder, nn.Identity):
            if x.dim() != 3 or x.shape[-1] != self.in_features:
                raise ValueError(
                    f"{name} must be [tasks, n, in_features={self.in_features}] vectors (no encoder "
                    f"was given), got {tuple(x.shape)}"
                )
            features = x
        else:
            features = self.encoder(x.flatten(0, 1)).flatten(1).unflatten(0, x.shape[:2])
            if features.shape[-1] != self.in_features:
                raise ValueError(
                    f"the encoder turns {name} {tuple(x.shape)} into {features.shape[-1]} features "
                    f"but in_features={self.in_features}"
                )
        return input_tokens(features, self.width, name=name)

    def _adapt(self, support_x: Tensor, support_y: Tensor) -> InContextState:
        """Encode the support set; no parameters change. Raises a ValueError naming a bad argument."""
        return self._encode_support(support_x, support_y, extra_tokens=1)

    def _encode_support(self, support_x: Tensor, support_y: Tensor, extra_tokens: int) -> InContextState:
        """:meth:`adapt` of checked tensors, for sequences of ``2k + extra_tokens`` tokens (1: a
        query; -1: a prefix). Paired sequences have ``k + 1`` tokens.
        """
        if support_x.dim() < 3:
            raise ValueError(f"support_x must be [tasks, k, *x_shape], got shape {tuple(support_x.shape)}")
        k = support_x.shape[1]
        per_example, what = (1, "k") if self.paired else (2, "2k")
        if per_example * k + extra_tokens > self.max_len:
            raise ValueError(
                f"support_x holds k={k} examples per task: sequences of {what}{extra_tokens:+d}="
                f"{per_example * k + extra_tokens} tokens, longer than max_len={self.max_len}"
            )
        expected = support_x.shape[:2] if self.n_way is not None else (*support_x.shape[:2], self.out_features)
        if support_y.shape != expected:
            raise ValueError(
                f"support_y must have shape {tuple(expected)} to match support_x "
                f"{tuple(support_x.shape)}, got {describe(support_y)}"
            )
        y_tokens = label_tokens(support_y, self.width, n_way=self.n_way, paired=self.paired, name="support_y")
        return InContextState(self.encode(support_x, "support_x"), y_tokens)

    def _query_outputs(self, adapted: InContextState, query_x: Tensor) -> Tensor:
        """Outputs at every position of every query sequence: ``[tasks, n_query, L, out]``.

        ``L = 2k + 1`` (one token per input and one per label) or ``k + 1`` (paired layout)."""
        query_tokens = self.encode(query_x, "query_x")
        if query_tokens.shape[0] != adapted.x_tokens.shape[0]:
            raise ValueError(
                f"query_x holds {query_tokens.shape[0]} tasks but the support set "
                f"{adapted.x_tokens.shape[0]}"
            )
        build = paired_query_sequences if self.paired else query_sequences
        sequences = build(adapted.x_tokens, adapted.y_tokens, query_tokens)
        outputs = self.read_out(self.transformer(self.read_in(sequences)))
        return outputs.unflatten(0, query_tokens.shape[:2])

    def _predict(self, adapted: InContextState, query_x: Tensor) -> Tensor:
        """``[tasks, n_query, out]``: the output at each query sequence's last token."""
        return self._query_outputs(adapted, query_x)[:, :, -1]

    def prefix_predictions(self, task: Task) -> Tensor:
        """The in-context learning curve: ``[tasks, k, out]``, row ``i`` predicts ``support_y[:, i]``.

        One pass over ``x_1, y_1, ..., x_k`` (:func:`~mlhelpers.sequences.prefix_sequence`); the
        output at ``x_i`` has seen the ``i - 1`` examples before it only (context lengths
        ``0 .. k - 1``). Shaped like the baselines of :mod:`mlhelpers.regression_baselines`; score with
        :func:`~mlhelpers.regression_baselines.normalised_squared_error` against ``task.support_y``. Needs the
        interleaved layout and ``2k - 1 <= max_len``.
        """
        if self.paired:
            raise ValueError("prefix_predictions needs layout='interleaved': a paired token holds its own label")
        check_task(task, module_device(self))
        state = self._encode_support(task.support_x, task.support_y, extra_tokens=-1)
        sequence = prefix_sequence(state.x_tokens, state.y_tokens)  # [T, 2k - 1, W]
        outputs = self.read_out(self.transformer(self.read_in(sequence)))
        return outputs[:, x_positions(task.n_support).to(outputs.device)]

    def _meta_loss(self, task: Task) -> Tensor:
        """Query loss; with ``loss_on_all_positions`` also the loss at every support ``x`` position.

        The support positions come for free: in each (causal) query sequence the outputs at
        ``x_1 .. x_k`` are exactly :meth:`prefix_predictions`.
        """
        outputs = self._query_outputs(self._adapt(task.support_x, task.support_y), task.query_x)
        query = outputs[:, :, -1]
        if not self.loss_on_all_positions:
            return task_loss(query, task.query_y)
        prefix = outputs[:, 0, x_positions(task.n_support).to(outputs.device)]  # [T, k, out]
        return task_loss(torch.cat([prefix, query], dim=1), torch.cat([task.support_y, task.query_y], dim=1))
