"""DARTS pieces: mixed operations, cells, and the architecture gradient against finite differences."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from mlhelpers.darts import (
    OPERATIONS,
    Cell,
    FixedNetwork,
    MixedOp,
    SearchNetwork,
    architecture_gradient,
    derive_architecture,
    mutate_architecture,
    random_architecture,
    regularized_evolution,
)

OPS = ("zero", "skip", "conv3x3", "avg_pool3x3")


def tiny_problem(seed: int = 0):
    torch.manual_seed(seed)
    net = SearchNetwork(1, 3, hidden_channels=2, cells=1, nodes=2, operations=OPS).double()
    g = torch.Generator().manual_seed(seed)
    alphas = net.init_alphas(scale=0.5, generator=g)
    batch = lambda n: (torch.randn(n, 1, 6, 6, generator=g, dtype=torch.float64),  # noqa: E731
                       torch.randint(0, 3, (n,), generator=g))
    return net, alphas, batch(6), batch(6)


def unrolled_val_loss(net, alphas, train, val, xi) -> float:
    """L_val(w - xi * grad_w L_train(w, alphas), alphas), computed independently of the helper."""
    w = dict(net.named_parameters())
    with torch.enable_grad():
        grads = torch.autograd.grad(F.cross_entropy(net(train[0], alphas), train[1]), list(w.values()))
    fast = {n: p.detach() - xi * g for (n, p), g in zip(w.items(), grads)}
    with torch.no_grad():
        return F.cross_entropy(functional_call(net, fast, (val[0], alphas)), val[1]).item()


@pytest.mark.parametrize("xi", [0.0, 0.3])
def test_architecture_gradient_matches_finite_differences(xi):
    net, alphas, train, val = tiny_problem()
    _, grad = architecture_gradient(net, alphas, train, val, xi=xi)
    h = 1e-6
    numeric = torch.zeros_like(alphas)
    for idx in torch.cartesian_prod(*[torch.arange(s) for s in alphas.shape]).tolist():
        values = []
        for sign in (1, -1):
            shifted = alphas.detach().clone()
            shifted[tuple(idx)] += sign * h
            values.append(unrolled_val_loss(net, shifted, train, val, xi))
        numeric[tuple(idx)] = (values[0] - values[1]) / (2 * h)
    assert float(numeric.abs().max()) > 1e-4, "the example must have a non-trivial gradient"
    torch.testing.assert_close(grad, numeric, rtol=1e-5, atol=1e-8)


def test_second_order_term_changes_the_gradient_and_leaves_weights_alone():
    net, alphas, train, val = tiny_problem(seed=1)
    before = [p.detach().clone() for p in net.parameters()]
    loss0, first = architecture_gradient(net, alphas, train, val, xi=0.0)
    _, second = architecture_gradient(net, alphas, train, val, xi=0.5)
    assert loss0.item() == pytest.approx(F.cross_entropy(net(val[0], alphas), val[1]).item())
    assert float((first - second).abs().max()) > 1e-3 * float(first.abs().max())
    assert all(torch.equal(a, b) and b.grad is None for a, b in zip(before, net.parameters()))


def test_mixed_op_with_one_hot_weights_is_that_operation():
    torch.manual_seed(0)
    mixed = MixedOp(3, OPS)
    x = torch.randn(2, 3, 5, 5)
    for k in range(len(OPS)):
        torch.testing.assert_close(mixed(x, F.one_hot(torch.tensor(k), len(OPS)).float()), mixed.ops[k](x))
    assert torch.count_nonzero(mixed.ops[0](x)) == 0 and torch.equal(mixed.ops[1](x), x)


def test_every_operation_keeps_the_shape():
    x = torch.randn(2, 4, 7, 7)
    for name, make in OPERATIONS.items():
        assert make(4)(x).shape == x.shape, name


def test_cell_wires_every_node_to_all_earlier_states():
    cell = Cell(2, nodes=3, operations=OPS)
    assert cell.num_edges == 6
    assert cell.edge_inputs() == [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
    # Only 'skip' on edges from the cell input, 'zero' elsewhere: every node equals the input.
    weights = torch.zeros(6, len(OPS))
    for edge, (_, source) in enumerate(cell.edge_inputs()):
        weights[edge, OPS.index("skip" if source == 0 else "zero")] = 1.0
    x = torch.randn(2, 2, 4, 4)
    torch.testing.assert_close(cell(x, weights), x)


def test_derive_architecture_ignores_zero():
    alphas = torch.tensor([[5.0, 1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 3.0]])
    assert derive_architecture(alphas, OPS) == ["conv3x3", "avg_pool3x3"]


def test_bad_inputs_name_themselves():
    net, alphas, train, val = tiny_problem()
    with pytest.raises(ValueError, match=r"alphas must have shape \(3, 4\).*got \(2, 4\)"):
        net(train[0], alphas[:2])
    with pytest.raises(ValueError, match="xi must be a number >= 0, got -1"):
        architecture_gradient(net, alphas, train, val, xi=-1)
    with pytest.raises(ValueError, match="alphas must require grad"):
        architecture_gradient(net, alphas.detach(), train, val, xi=0.1)
    with pytest.raises(ValueError, match="operations must be a non-empty list.*'conv7x7'"):
        MixedOp(2, ["skip", "conv7x7"])
    with pytest.raises(ValueError, match=r"alphas must be \[edges, 4\], got \(3,\)"):
        derive_architecture(torch.zeros(3), OPS)


def test_fixed_network_equals_search_network_with_one_hot_alphas():
    torch.manual_seed(0)
    search = SearchNetwork(1, 3, hidden_channels=2, cells=2, nodes=2, operations=OPS).double()
    architecture = ["conv3x3", "skip", "avg_pool3x3"]
    fixed = FixedNetwork(1, 3, architecture, hidden_channels=2, cells=2, nodes=2).double()
    fixed.stem.load_state_dict(search.stem.state_dict())
    fixed.head.load_state_dict(search.head.state_dict())
    for fixed_cell, search_cell in zip(fixed.cells, search.cells):
        for e, name in enumerate(architecture):
            fixed_cell.edges[e].load_state_dict(search_cell.edges[e].ops[OPS.index(name)].state_dict())
    alphas = torch.full(search.alpha_shape, -1e4, dtype=torch.float64)
    alphas[torch.arange(3), torch.tensor([OPS.index(n) for n in architecture])] = 0.0
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    assert fixed.architecture == tuple(architecture)
    torch.testing.assert_close(fixed(x), search(x, alphas))
    assert derive_architecture(alphas, OPS) == architecture


def test_fixed_network_checks_the_architecture():
    with pytest.raises(ValueError, match="3 edges"):
        FixedNetwork(1, 3, ["skip", "skip"], nodes=2)
    with pytest.raises(ValueError, match="operations must be"):
        FixedNetwork(1, 3, ["skip", "skip", "teleport"], nodes=2)


def test_random_architecture_draws_non_zero_operations_reproducibly():
    draw = lambda seed: random_architecture(6, OPS, torch.Generator().manual_seed(seed))  # noqa: E731
    assert draw(3) == draw(3) and len(draw(3)) == 6
    seen = {op for seed in range(20) for op in draw(seed)}
    assert seen == set(OPS) - {"zero"}


def _live_inputs(architecture, nodes=3):
    node_of = [j for j in range(nodes) for _ in range(j + 1)]
    return [sum(op != "zero" for e, op in enumerate(architecture) if node_of[e] == j) for j in range(nodes)]


def test_a_mutation_changes_one_edge_and_every_node_keeps_an_input():
    g = torch.Generator().manual_seed(0)
    architecture = random_architecture(6, OPS, generator=g)
    kinds = set()
    for _ in range(300):
        child = mutate_architecture(architecture, 3, OPS, generator=g)
        changed = [e for e in range(6) if child[e] != architecture[e]]
        assert len(changed) == 1
        kinds.add("edge" if "zero" in (child[changed[0]], architecture[changed[0]]) else "op")
        assert min(_live_inputs(child)) >= 1
        architecture = child
    assert kinds == {"edge", "op"}
    FixedNetwork(1, 3, architecture, hidden_channels=2)(torch.randn(2, 1, 6, 6))  # zeros still build a network


def test_regularized_evolution_is_reproducible_and_keeps_the_youngest_population_size():
    score = lambda a: sum(op == "conv3x3" for op in a) + 0.1 * sum(op == "skip" for op in a)  # noqa: E731
    sizes, populations = [], []

    def run(seed, callback=None):
        return regularized_evolution(score, cycles=60, population_size=10, sample_size=3, operations=OPS,
                                     generator=torch.Generator().manual_seed(seed), callback=callback)

    history = run(0, lambda population: (sizes.append(len(population)), populations.append(population)))
    assert history == run(0) and history != run(1)
    assert len(history) == 10 + 60 and max(sizes) == 10 and sizes[-1] == 10
    for step, population in enumerate(populations[10:], start=11):  # after the first cycle: the 10 youngest
        assert population == history[step - 10:step]
    # The optimum (a 3x3 convolution on all six edges) has probability 3**-6 per random cell; evolution finds it.
    assert max(f for _, f in history) == 6
    with pytest.raises(ValueError, match="sample_size"):
        regularized_evolution(score, cycles=1, population_size=2, sample_size=3, operations=OPS)
