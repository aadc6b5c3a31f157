"""Differentiable architecture search (DARTS, Liu et al. 2019), small enough for a CPU. Chapter 6.

Another bilevel problem (Chapter 2): architecture weights ``alpha`` outside, network weights ``w``
inside, ``w*(alpha)`` approximated by one step ``w' = w - xi * grad_w L_train(w, alpha)``
(``xi = 0``: first-order DARTS). Each edge is a :class:`MixedOp`, a softmax(alpha)-weighted sum of
candidate operations; a :class:`Cell` sums edges into nodes; :class:`SearchNetwork` takes
``alphas`` as an argument of ``forward``. :func:`architecture_gradient` is exact (autograd, where
the paper uses finite differences); :func:`derive_architecture` keeps the strongest operation of
each edge and :class:`FixedNetwork` retrains it from scratch. :func:`regularized_evolution` (Real et al.
2019) searches the same cell space without gradients, by tournament selection and mutation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from mlhelpers.learners.functional import Params, module_for_this_thread, sgd_steps
from mlhelpers.validation import NonFiniteError, check_positive_int


class Zero(nn.Module):
    """The 'no edge' operation: zeros of the input's shape."""

    def forward(self, x: Tensor) -> Tensor:
        return x * 0.0


def _conv(channels: int, kernel: int, dilation: int = 1) -> nn.Module:
    padding = dilation * (kernel - 1) // 2
    conv = nn.Conv2d(channels, channels, kernel, padding=padding, dilation=dilation, bias=False)
    return nn.Sequential(nn.ReLU(), conv, nn.BatchNorm2d(channels, affine=False, track_running_stats=False))


OPERATIONS: dict[str, Callable[[int], nn.Module]] = {
    "zero": lambda c: Zero(),
    "skip": lambda c: nn.Identity(),
    "conv3x3": lambda c: _conv(c, 3),
    "conv5x5": lambda c: _conv(c, 5),
    "dil_conv3x3": lambda c: _conv(c, 3, dilation=2),
    "max_pool3x3": lambda c: nn.MaxPool2d(3, stride=1, padding=1),
    "avg_pool3x3": lambda c: nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
}
"""Candidate operations by name: each maps ``[batch, C, H, W]`` to the same shape."""

DEFAULT_OPERATIONS = ("zero", "skip", "conv3x3", "conv5x5", "dil_conv3x3", "max_pool3x3", "avg_pool3x3")


def _check_operations(operations: Sequence[str], name: str = "operations") -> tuple[str, ...]:
    if isinstance(operations, str):
        raise TypeError(f"{name} must be a list of operation names, got str {operations!r}")
    unknown = [op for op in operations if op not in OPERATIONS]
    if not operations or unknown:
        raise ValueError(f"{name} must be a non-empty list of {sorted(OPERATIONS)}, got {list(operations)!r}")
    return tuple(operations)


class MixedOp(nn.Module):
    """``sum_k weights[k] * op_k(x)`` over the candidate operations; ``weights`` ``[n_ops]``."""

    def __init__(self, channels: int, operations: Sequence[str] = DEFAULT_OPERATIONS) -> None:
        super().__init__()
        self.operations = _check_operations(operations)
        self.ops = nn.ModuleList(OPERATIONS[name](check_positive_int("channels", channels)) for name in self.operations)

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        if weights.shape != (len(self.ops),):
            raise ValueError(f"weights must have shape ({len(self.ops)},), got {tuple(weights.shape)}")
        return sum(w * op(x) for w, op in zip(weights, self.ops))


class Cell(nn.Module):
    """A DARTS cell with ``nodes`` intermediate nodes; ``edges = nodes * (nodes + 1) / 2`` mixed ops.

    Node ``j`` (0-based) receives an edge from the cell input and from nodes ``0..j-1``; edges are
    numbered node by node. ``forward(x, weights)`` takes ``weights`` ``[edges, n_ops]`` (rows sum
    to 1) and returns the mean of the nodes, ``[batch, C, H, W]``.
    """

    def __init__(self, channels: int, nodes: int = 3, operations: Sequence[str] = DEFAULT_OPERATIONS) -> None:
        super().__init__()
        self.nodes = check_positive_int("nodes", nodes)
        self.edges = nn.ModuleList(MixedOp(channels, operations) for j in range(nodes) for _ in range(j + 1))

    @property
    def num_edges(self) -> int:
        return len(self.edges)

    def edge_inputs(self) -> list[tuple[int, int]]:
        """``(node, source)`` of every edge; source 0 is the cell input, ``i + 1`` is node ``i``."""
        return [(j, i) for j in range(self.nodes) for i in range(j + 1)]

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        if weights.shape[0] != self.num_edges:
            raise ValueError(f"weights must have {self.num_edges} rows (one per edge), got {tuple(weights.shape)}")
        return _wire(x, self.nodes, lambda edge, h: self.edges[edge](h, weights[edge]))


def _wire(x: Tensor, nodes: int, edge: Callable[[int, Tensor], Tensor]) -> Tensor:
    """The wiring of a cell: node ``j`` sums ``edge(k, state)`` over the cell input and nodes
    ``0..j-1`` (edges ``k`` numbered node by node); returns the mean of the nodes."""
    states, k = [x], 0
    for j in range(nodes):
        node = 0
        for i in range(j + 1):
            node = node + edge(k, states[i])
            k += 1
        states.append(node)
    return torch.stack(states[1:]).mean(dim=0)


def _stem(in_channels: int, hidden_channels: int) -> nn.Module:
    """3x3 conv to ``hidden_channels`` and a parameter-free BatchNorm: the first layer of both networks."""
    check_positive_int("in_channels", in_channels)
    check_positive_int("hidden_channels", hidden_channels)
    conv = nn.Conv2d(in_channels, hidden_channels, 3, padding=1, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(hidden_channels, affine=False, track_running_stats=False))


class SearchNetwork(nn.Module):
    """Stem conv, ``cells`` cells sharing one architecture (2x2 max-pool after each), linear head.

    ``[batch, in_channels, H, W] -> [batch, out_features]``. The architecture is not a parameter of
    the module: :meth:`forward` takes ``alphas`` ``[edges, n_ops]`` (logits; softmax per edge),
    and :meth:`init_alphas` makes a starting value.
    """

    def __init__(self, in_channels: int, out_features: int, hidden_channels: int = 8, cells: int = 2, nodes: int = 3,
                 operations: Sequence[str] = DEFAULT_OPERATIONS) -> None:
        super().__init__()
        self.operations = _check_operations(operations)
        self.stem = _stem(in_channels, hidden_channels)
        self.cells = nn.ModuleList(Cell(hidden_channels, nodes, operations)
                                   for _ in range(check_positive_int("cells", cells)))
        self.head = nn.Linear(hidden_channels, check_positive_int("out_features", out_features))

    @property
    def alpha_shape(self) -> tuple[int, int]:
        return (self.cells[0].num_edges, len(self.operations))

    def init_alphas(self, scale: float = 1e-3, generator: torch.Generator | None = None) -> Tensor:
        """Small random architecture logits ``[edges, n_ops]`` that require grad."""
        alphas = scale * torch.randn(self.alpha_shape, generator=generator)
        return alphas.to(self.head.weight).requires_grad_()

    def forward(self, x: Tensor, alphas: Tensor) -> Tensor:
        if alphas.shape != self.alpha_shape:
            raise ValueError(
                f"alphas must have shape {self.alpha_shape} (edges, operations), got {tuple(alphas.shape)}"
            )
        weights = F.softmax(alphas, dim=-1)
        h = self.stem(x)
        for cell in self.cells:
            h = F.max_pool2d(cell(h, weights), 2)
        return self.head(h.mean(dim=(2, 3)))


def architecture_gradient(
    network: nn.Module,
    alphas: Tensor,
    train_batch: tuple[Tensor, Tensor],
    val_batch: tuple[Tensor, Tensor],
    xi: float,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
) -> tuple[Tensor, Tensor]:
    """``(L_val, d L_val(w', alphas) / d alphas)`` with ``w' = w - xi * grad_w L_train(w, alphas)``.

    ``xi = 0`` is first-order DARTS (``w' = w``). For ``xi > 0`` the gradient includes the
    second-order term ``-xi * d^2 L_train / (d alpha d w) . grad_w' L_val`` exactly (autograd keeps
    the graph of the inner gradient), as MAML's meta-gradient does. ``network`` is called as
    ``network(x, alphas)``; its own weights are not changed and get no gradient. The step to
    ``w'`` is one step of :func:`~mlhelpers.learners.functional.sgd_steps`, MAML's inner loop.
    Safe to call on one network from several threads at once (each runs its own module replica).
    """
    if not isinstance(xi, (int, float)) or isinstance(xi, bool) or xi < 0:
        raise ValueError(f"xi must be a number >= 0, got {xi!r}")
    if not alphas.requires_grad:
        raise ValueError("alphas must require grad (use network.init_alphas() or alphas.requires_grad_())")
    weights = dict(network.named_parameters())
    module = module_for_this_thread(network)  # functional_call swaps weights: one module per thread
    if xi > 0:
        def train_loss(fast: Params) -> Tensor:
            return loss_fn(functional_call(module, fast, (train_batch[0], alphas)), train_batch[1])

        weights = sgd_steps(train_loss, weights, dict.fromkeys(weights, xi), 1, create_graph=True, functional=False)
    val_loss = loss_fn(functional_call(module, weights, (val_batch[0], alphas)), val_batch[1])
    (grad,) = torch.autograd.grad(val_loss, alphas)
    return val_loss.detach(), grad


def derive_architecture(alphas: Tensor, operations: Sequence[str] = DEFAULT_OPERATIONS) -> list[str]:
    """The operation of each edge with the largest weight, ignoring ``"zero"`` as DARTS does."""
    operations = _check_operations(operations)
    if alphas.dim() != 2 or alphas.shape[1] != len(operations):
        raise ValueError(f"alphas must be [edges, {len(operations)}], got {tuple(alphas.shape)}")
    masked = alphas.detach().clone()
    if "zero" in operations and len(operations) > 1:
        masked[:, operations.index("zero")] = -float("inf")
    return [operations[i] for i in masked.argmax(dim=1).tolist()]


class FixedCell(nn.Module):
    """A cell with one operation per edge (the wiring of :class:`Cell`), ``[b, C, H, W]`` -> same."""

    def __init__(self, channels: int, architecture: Sequence[str], nodes: int = 3) -> None:
        super().__init__()
        self.nodes = check_positive_int("nodes", nodes)
        expected = nodes * (nodes + 1) // 2
        architecture = _check_operations(architecture)
        if len(architecture) != expected:
            raise ValueError(f"a cell with {nodes} nodes has {expected} edges, got {len(architecture)} operations")
        self.architecture = architecture
        self.edges = nn.ModuleList(OPERATIONS[name](check_positive_int("channels", channels)) for name in architecture)

    def forward(self, x: Tensor) -> Tensor:
        return _wire(x, self.nodes, lambda edge, h: self.edges[edge](h))


class FixedNetwork(nn.Module):
    """The :class:`SearchNetwork` layout with a discrete architecture: what DARTS retrains.

    ``architecture`` names one operation per edge (e.g. the output of :func:`derive_architecture`
    or :func:`random_architecture`), shared by all cells. ``[batch, in_channels, H, W] -> [batch, out_features]``.
    """

    def __init__(self, in_channels: int, out_features: int, architecture: Sequence[str], hidden_channels: int = 8,
                 cells: int = 2, nodes: int = 3) -> None:
        super().__init__()
        self.architecture = _check_operations(architecture)
        self.stem = _stem(in_channels, hidden_channels)
        self.cells = nn.ModuleList(FixedCell(hidden_channels, architecture, nodes)
                                   for _ in range(check_positive_int("cells", cells)))
        self.head = nn.Linear(hidden_channels, check_positive_int("out_features", out_features))

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        for cell in self.cells:
            h = F.max_pool2d(cell(h), 2)
        return self.head(h.mean(dim=(2, 3)))


def random_architecture(edges: int, operations: Sequence[str] = DEFAULT_OPERATIONS,
                        generator: torch.Generator | None = None) -> list[str]:
    """One operation per edge, uniformly from ``operations`` without ``"zero"`` (as derived ones)."""
    check_positive_int("edges", edges)
    choices = [op for op in _check_operations(operations) if op != "zero"] or ["zero"]
    picks = torch.randint(len(choices), (edges,), generator=generator).tolist()
    return [choices[i] for i in picks]


def mutate_architecture(architecture: Sequence[str], nodes: int = 3, operations: Sequence[str] = DEFAULT_OPERATIONS,
                        generator: torch.Generator | None = None) -> list[str]:
    """One mutation of Real et al. (2019), in the cell space of :class:`FixedCell`: a copy of
    ``architecture`` with either one edge's operation replaced by another non-zero operation (an
    op mutation) or one edge switched off (to ``"zero"``) or back on (a random non-zero operation)
    (an edge mutation, our version of their hidden-state mutation in a cell whose nodes see every
    earlier state). Each kind with probability 1/2; an edge is never switched off if it is its
    node's last non-zero input, so every node keeps an input.
    """
    operations = _check_operations(operations)
    architecture = list(_check_operations(architecture, "architecture"))
    if len(architecture) != check_positive_int("nodes", nodes) * (nodes + 1) // 2:
        raise ValueError(f"a cell with {nodes} nodes has {nodes * (nodes + 1) // 2} edges, got {len(architecture)}")
    choices = [op for op in operations if op != "zero"]
    if not choices:
        raise ValueError("operations must contain a non-zero operation")
    node_of = [j for j in range(nodes) for _ in range(j + 1)]
    cut_off = [j for j in range(nodes) if all(op == "zero" for e, op in enumerate(architecture) if node_of[e] == j)]
    if cut_off:
        raise ValueError(f"architecture {architecture} leaves node {cut_off[0]} without a non-zero input: every node "
                         "needs one (as random_architecture and mutate_architecture keep it)")

    def randint(n: int) -> int:
        return int(torch.randint(n, (1,), generator=generator))

    if randint(2) == 0 or "zero" not in operations:  # op mutation, on an edge that is on
        on = [e for e, op in enumerate(architecture) if op != "zero"]
        edge = on[randint(len(on))]
        others = [op for op in choices if op != architecture[edge]] or choices
        architecture[edge] = others[randint(len(others))]
        return architecture
    live = [sum(op != "zero" for e, op in enumerate(architecture) if node_of[e] == j) for j in range(nodes)]
    togglable = [e for e, op in enumerate(architecture) if op == "zero" or live[node_of[e]] > 1]
    edge = togglable[randint(len(togglable))]
    architecture[edge] = choices[randint(len(choices))] if architecture[edge] == "zero" else "zero"
    return architecture


def regularized_evolution(
    fitness: Callable[[list[str]], float],
    *,
    cycles: int,
    population_size: int,
    sample_size: int,
    nodes: int = 3,
    operations: Sequence[str] = DEFAULT_OPERATIONS,
    generator: torch.Generator | None = None,
    callback: Callable[[list[tuple[list[str], float]]], None] | None = None,
) -> list[tuple[list[str], float]]:
    """Regularised (ageing) evolution of Real et al. (2019) over the :class:`FixedCell` space.

    ``population_size`` random architectures (:func:`random_architecture`) are scored with
    ``fitness(architecture)`` (higher is better, e.g. validation accuracy after a short training);
    then each of ``cycles`` cycles samples ``sample_size`` members at random, mutates the best of
    them (:func:`mutate_architecture`), scores the child, adds it and removes the **oldest** member
    (not the worst: that is the regularisation). ``callback(population)`` sees the population of
    ``(architecture, fitness)`` after every step. Returns every scored ``(architecture, fitness)``
    in order (``population_size + cycles`` of them); the best of them is the search's answer.
    """
    check_positive_int("cycles", cycles)
    check_positive_int("population_size", population_size)
    if check_positive_int("sample_size", sample_size) > population_size:
        raise ValueError(f"sample_size ({sample_size}) must be <= population_size ({population_size})")
    edges = check_positive_int("nodes", nodes) * (nodes + 1) // 2
    population: list[tuple[list[str], float]] = []  # oldest first
    history: list[tuple[list[str], float]] = []

    if not callable(fitness):
        raise TypeError(f"fitness must be a callable architecture -> number, got {type(fitness).__name__}")

    def add(architecture: list[str]) -> None:
        value = fitness(list(architecture))
        try:
            score = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"fitness must return a number, got {type(value).__name__} {value!r} for "
                            f"{architecture}") from None
        if math.isnan(score):  # NaN compares False with everything: a tournament would keep picking it
            raise NonFiniteError(f"fitness returned nan for architecture {architecture}: score a failed "
                                 "architecture with a number (-inf never wins a tournament)")
        member = (architecture, score)
        population.append(member)
        history.append(member)

    while len(population) < population_size:
        add(random_architecture(edges, operations, generator=generator))
        if callback is not None:
            callback(list(population))
    for _ in range(cycles):
        picks = torch.randperm(population_size, generator=generator)[:sample_size].tolist()
        parent = max((population[i] for i in picks), key=lambda member: member[1])[0]
        add(mutate_architecture(parent, nodes, operations, generator=generator))
        population.pop(0)
        if callback is not None:
            callback(list(population))
    return history
