# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2. Learning to learn as bilevel optimisation
#
# Chapter 1 ended on a failure. A network trained on thousands of sine waves at once could not
# adapt to a new one from five points: it had learned the *average* wave, and ten gradient steps
# from the average were not enough. The fix is to ask for the right thing. We do not want
# parameters that are good on average; we want parameters that are good **after a few steps of
# learning** on any new task. Written as an equation, that wish is an optimisation problem with
# another optimisation problem inside it.
#
# This chapter takes that problem apart, one derivative at a time:
#
# 1. the objective of MAML (Finn, Abbeel & Levine, 2017), its inner and outer loop, and why it
#    uses two losses;
# 2. its gradient, by the chain rule, with the Hessian term that makes it "second order";
# 3. a laboratory with **two parameters**, where every formula is checked against PyTorch and
#    against finite differences, and where we can draw the whole landscape;
# 4. first-order MAML and Reptile: what they drop, and where that takes them;
# 5. Hessian-vector products, the trick that makes second-order meta-learning affordable;
# 6. what second-order gradients cost, measured on a real network;
# 7. the two classic bugs that silently remove the meta-gradient.
#
# Every number is computed when the notebook runs. In *quick mode* (`MLHELPERS_QUICK=1`) the
# budgets shrink and the notebook runs in under a minute; the website shows a full run.

# %%
# On Colab, install the book's helper package first; elsewhere this cell does nothing.
import sys

if "google.colab" in sys.modules:
    # %pip install -q "mlhelpers @ git+https://github.com/learning-to-learn-book/learning-to-learn"
    pass

# %%
import copy
import math
import time
import warnings

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, hessian, jvp, vjp, vmap

import mlhelpers
from mlhelpers import Task, budget, quick_mode, seed_everything
from mlhelpers.learners import MAML
from mlhelpers.memory import RetainedGraphMemory
from mlhelpers.models import conv4, mlp
from mlhelpers.samplers.regression import SinusoidTasks

# The tensors in this chapter are tiny: one CPU thread runs them fastest and keeps timings steady.
torch.set_num_threads(1)
# Forward-mode differentiation (torch.func.jvp) warns once about PyTorch's own internals; not our code.
warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=FutureWarning)
device = mlhelpers.default_device()
f64 = torch.float64  # the two-parameter laboratory runs in double precision, for exact checks
print(f"mlhelpers {mlhelpers.__version__}, torch {torch.__version__}, device {device}, quick mode {quick_mode()}")

# %% [markdown]
# ## 2.1 An optimisation problem inside another
#
# Take a model with parameters $\theta$ and a distribution of tasks $p(\mathcal{T})$. Each task
# $\mathcal{T}_i$ brings a support set $\mathcal{S}_i$ and a query set $\mathcal{Q}_i$ (Chapter 1),
# and with them two losses: $\mathcal{L}^{S}_i(\theta)$, the loss of the model on the support set,
# and $\mathcal{L}^{Q}_i(\theta)$, its loss on the query set. MAML asks for the initial parameters
# from which **one gradient step on the support set** gives a small loss on the query set:
#
# $$
# \theta^\star = \arg\min_\theta \; \mathbb{E}_{\mathcal{T}_i \sim p(\mathcal{T})}
#   \Big[ \mathcal{L}^{Q}_i\big(\theta - \alpha \nabla_\theta \mathcal{L}^{S}_i(\theta)\big) \Big].
# $$
#
# The expression has two loops folded into it.
#
# - The **inner loop** (adaptation) is ordinary learning on one task: starting from $\theta$, take
#   a gradient step (or a few) on the support set, with a fixed learning rate $\alpha$,
#   $\phi_i = \theta - \alpha \nabla \mathcal{L}^S_i(\theta)$. The result $\phi_i$ are the *adapted*
#   or *fast* parameters of task $i$.
# - The **outer loop** (meta-update) changes the starting point so that adaptation works better:
#   with a meta-batch of $B$ tasks and a meta learning rate $\beta$,
#   $\theta \leftarrow \theta - \beta \, \nabla_\theta \frac{1}{B} \sum_i \mathcal{L}^Q_i(\phi_i(\theta))$.
#
# In the language of optimisation this is a **bilevel problem**: an upper-level problem in
# $\theta$ whose objective depends on the solution of a lower-level problem per task,
#
# $$
# \min_\theta \; \mathbb{E}_i \Big[ \mathcal{L}^Q_i\big(\phi_i(\theta)\big) \Big]
# \quad \text{subject to} \quad \phi_i(\theta) = \mathrm{Alg}\big(\theta, \mathcal{S}_i\big),
# $$
#
# where $\mathrm{Alg}$ is the learning algorithm of the inner loop. In classic bilevel problems the
# lower level is solved *exactly*, $\phi_i = \arg\min_\phi \mathcal{L}^S_i(\phi)$. Here that would
# be useless: the exact minimiser of the support loss does not depend on where the search started,
# so $\theta$ would drop out of the objective. MAML keeps the inner loop short on purpose. A few
# gradient steps remember where they started, and that memory is the only channel through which
# $\theta$ acts. (Implicit MAML, Rajeswaran et al. 2019, takes the other road: an exact inner
# solution of $\mathcal{L}^S_i(\phi) + \frac{\lambda}{2}\lVert\phi - \theta\rVert^2$, where the
# penalty keeps $\theta$ in the game.)
#
# **Why two losses?** The support loss is what the learner may use; the query loss is what we care
# about: how well the adapted model does on *new* points of the same task. Were the outer loss
# computed on the support set again, the meta-learner would be rewarded for initialisations from
# which one step *memorises* the support points, noise included, which is not what happens at test
# time, when the support set is all we have and the queries are unseen. Chapter 1 made the same
# point for a nearest-neighbour learner, which is perfect on its own support set. Exercise 2.5
# shows when the distinction matters in practice and when it does not.
#
# ## 2.2 The meta-gradient, by the chain rule
#
# To run the outer loop we need $\nabla_\theta \mathcal{L}^Q(\phi(\theta))$ for one task (drop the
# index $i$; the meta-gradient of a batch is the mean over its tasks). The adapted parameters are a
# function of $\theta$, $\phi(\theta) = \theta - \alpha \nabla \mathcal{L}^S(\theta)$, whose
# Jacobian is
#
# $$
# \frac{\partial \phi}{\partial \theta} = I - \alpha \, H_S(\theta),
# \qquad H_S(\theta) = \nabla^2 \mathcal{L}^S(\theta) \ \text{(the Hessian of the support loss)}.
# $$
#
# The chain rule, and the symmetry of the Hessian, give the **meta-gradient**
#
# $$
# \boxed{\;\nabla_\theta \mathcal{L}^Q\big(\phi(\theta)\big)
#   = \big(I - \alpha H_S(\theta)\big)\, \nabla \mathcal{L}^Q(\phi)\;}
# $$
#
# Read it from the right. $\nabla\mathcal{L}^Q(\phi)$ is the ordinary gradient of the query loss,
# taken at the adapted parameters: the direction in which $\phi$ should move. The matrix
# $I - \alpha H_S$ translates that wish from $\phi$ back to $\theta$, because moving $\theta$ does
# not move $\phi$ one for one: along a direction where the support loss has curvature $\lambda$,
# a step shrinks the distance to the minimum by the factor $1 - \alpha\lambda$, so a nudge of
# $\theta$ moves $\phi$ by $(1 - \alpha\lambda)$ times as much. Where $\alpha\lambda \approx 1$ the
# inner step lands on the minimum whatever $\theta$ was, and the meta-gradient stops caring about
# that direction. The Hessian term is the part that knows this; it is what makes MAML a
# *second-order* method.
#
# With $k$ inner steps, $\phi_0 = \theta$ and $\phi_j = \phi_{j-1} - \alpha\nabla\mathcal{L}^S(\phi_{j-1})$,
# the chain rule multiplies one such Jacobian per step, each Hessian taken where its step started:
#
# $$
# \nabla_\theta \mathcal{L}^Q(\phi_k)
#   = \big(I - \alpha H_S(\phi_0)\big)\big(I - \alpha H_S(\phi_1)\big)\cdots\big(I - \alpha H_S(\phi_{k-1})\big)\,
#     \nabla \mathcal{L}^Q(\phi_k).
# $$
#
# Backpropagation evaluates this product from the right: it starts with the query gradient at
# the end of the inner loop and walks back through the steps, last step first.
#
# The computation graph of one task with one inner step: the forward pass adapts and evaluates,
# the meta-gradient flows back, and the two methods differ only on the edge from $\phi$ to $\theta$.

# %% tags=["schematic"]
from mlhelpers import diagrams

fig, ax = diagrams.canvas(10, 4.4)
theta = diagrams.box(ax, 0.9, 2.6, "$\\theta$\ninitial weights", width=1.4, height=0.8, color="model")
inner = diagrams.box(ax, 3.5, 2.6, "inner step\n$\\phi = \\theta - \\alpha\\nabla\\mathcal{L}^S(\\theta)$", width=2.4, height=0.8, color="inner")
phi = diagrams.box(ax, 6.1, 2.6, "$\\phi$\nadapted weights", width=1.5, height=0.8, color="model")
query_loss = diagrams.box(ax, 8.6, 2.6, "query loss\n$\\mathcal{L}^Q(\\phi)$", width=1.6, height=0.8, color="query")
support = diagrams.box(ax, 3.5, 3.95, "support set $S$", width=1.8, height=0.5, color="support")
query = diagrams.box(ax, 8.6, 3.95, "query set $Q$", width=1.6, height=0.5, color="query")
for start, end in [(theta.right, inner.left), (inner.right, phi.left), (phi.right, query_loss.left),
                   (support.bottom, inner.top), (query.bottom, query_loss.top)]:
    diagrams.arrow(ax, start, end)
ax.text(4.75, 3.2, "forward: adapt, then evaluate", fontsize=9, ha="center")
red = "#b03030"
diagrams.arrow(ax, query_loss.bottom, phi.bottom, "$\\nabla\\mathcal{L}^Q(\\phi)$", color=red, curve=-0.4, text_offset=(0, -0.75), fontsize=10)
grey = "#777777"
diagrams.arrow(ax, phi.bottom, theta.bottom, color=red, curve=-0.25)
diagrams.arrow(ax, phi.bottom, theta.bottom, color=grey, dashed=True, curve=-0.5)
ax.text(0.2, 0.5, "second order: $\\times\\,(I - \\alpha H_S)$, differentiates back through the inner step", fontsize=10, color=red)
ax.text(0.2, 0.1, "first order: $\\times\\, I$, drops $\\alpha H_S$ (the inner gradient treated as a constant)", fontsize=10, color=grey)
ax.text(0.2, 3.8, "meta-update:\n$\\theta \\leftarrow \\theta - \\beta\\,\\nabla_\\theta \\mathcal{L}^Q(\\phi(\\theta))$", fontsize=10, color=red, va="center")
plt.show()

# %% [markdown]
# ## 2.3 A laboratory with two parameters
#
# To check these formulas and *see* what they do we want a problem small enough to draw. Each task
# is a line, $y = a x + b$, observed with noise (standard deviation 0.3), and the model is a line
# too: $f_\theta(x) = \theta_1 x + \theta_2$, slope and intercept, two parameters. Tasks come in two
# kinds, so that they differ in *how easy they are to learn*, not only in their answer:
#
# - **wide** tasks observe inputs across $[-1.5, 1.5]$; their lines have slopes near $+1.5$ and
#   intercepts near $+1$;
# - **narrow** tasks observe inputs in $[-0.5, 0.5]$ only; their lines have slopes near $-1.5$ and
#   intercepts near $-1$.
#
# The support set of a task is five readings at evenly spaced inputs across its range, the query
# set fifteen readings at random inputs in the same range. On a narrow task the slope is hard to
# learn: the inputs hardly vary, so tilting the line hardly changes the loss.

# %%
def line_tasks(num_tasks: int, k_shot: int = 5, q_query: int = 15, noise: float = 0.3, seed: int = 0) -> Task:
    """Noisy lines y = a x + b; even-numbered tasks are 'wide' (x in [-1.5, 1.5]), odd ones 'narrow' (x in [-0.5, 0.5])."""
    g = torch.Generator().manual_seed(seed)
    wide = torch.arange(num_tasks) % 2 == 0
    half_range = torch.where(wide, 1.5, 0.5).to(f64)
    slope = torch.where(wide, 1.5, -1.5).to(f64) + 0.3 * torch.randn(num_tasks, generator=g, dtype=f64)
    intercept = torch.where(wide, 1.0, -1.0).to(f64) + 0.3 * torch.randn(num_tasks, generator=g, dtype=f64)
    support_x = torch.linspace(-1, 1, k_shot, dtype=f64) * half_range[:, None]  # evenly spaced
    query_x = (2 * torch.rand(num_tasks, q_query, generator=g, dtype=f64) - 1) * half_range[:, None]
    support_y = slope[:, None] * support_x + intercept[:, None] + noise * torch.randn(support_x.shape, generator=g, dtype=f64)
    query_y = slope[:, None] * query_x + intercept[:, None] + noise * torch.randn(query_x.shape, generator=g, dtype=f64)
    return Task(support_x[..., None], support_y[..., None], query_x[..., None], query_y[..., None],
                {"slope": slope, "intercept": intercept, "wide": wide})


lines = line_tasks(200, seed=0)  # the meta-training tasks of the laboratory
wide = lines.info["wide"]
print(f"{len(lines)} tasks ({int(wide.sum())} wide, {int((~wide).sum())} narrow); "
      f"support_x {tuple(lines.support_x.shape)}, query_x {tuple(lines.query_x.shape)}")

KIND_COLOURS = {"wide": "#1f77b4", "narrow": "#9467bd"}
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
xx = torch.linspace(-1.6, 1.6, 50, dtype=f64)
for ax, (kind, mask) in zip(axes, [("wide", wide), ("narrow", ~wide)]):
    for i, colour in zip(torch.nonzero(mask).flatten()[:3].tolist(), ["#1f77b4", "#ff7f0e", "#2ca02c"]):
        ax.plot(xx, lines.info["slope"][i] * xx + lines.info["intercept"][i], color=colour, alpha=0.6)
        ax.scatter(lines.query_x[i, :, 0], lines.query_y[i, :, 0], s=10, color=colour, alpha=0.5)
        ax.scatter(lines.support_x[i, :, 0], lines.support_y[i, :, 0], s=45, color=colour, edgecolor="k", zorder=3)
    ax.set_title(f"three {kind} tasks")
    ax.set_xlabel("x")
axes[0].set_ylabel("y")
fig.suptitle("Support points (outlined), query points (small) and the true line of each task")
fig.tight_layout()
plt.show()

# %% [markdown]
# The mean squared error of a line is a quadratic function of $\theta$, so everything here can be
# done by hand. With features $\varphi(x) = (x, 1)$ and $n$ points,
#
# $$
# \mathcal{L}(\theta) = \frac{1}{n}\sum_{j} \big(\theta^\top\varphi(x_j) - y_j\big)^2,\qquad
# \nabla\mathcal{L}(\theta) = \frac{2}{n}\sum_j \big(\theta^\top\varphi(x_j) - y_j\big)\varphi(x_j),\qquad
# H = \frac{2}{n}\sum_j \varphi(x_j)\varphi(x_j)^\top =
# 2\begin{pmatrix} \overline{x^2} & \overline{x} \\ \overline{x} & 1 \end{pmatrix}.
# $$
#
# The Hessian does not depend on $\theta$ at all, only on where the inputs are: the curvature along
# the slope is $2\,\overline{x^2}$, along the intercept it is 2 for every task.

# %%
ALPHA = 0.35  # the inner learning rate of the laboratory


def features(x):
    """[..., n, 1] inputs -> [..., n, 2] features (x, 1)."""
    return torch.cat([x, torch.ones_like(x)], dim=-1)


def gradient_by_hand(theta, x, y):
    """grad of the MSE of lines theta [..., 2] on points x, y [..., n, 1]: (2/n) sum (theta.phi - y) phi."""
    phi = features(x)
    residual = (phi @ theta[..., None]) - y
    return 2 * (phi.transpose(-1, -2) @ residual)[..., 0] / x.shape[-2]


def hessian_by_hand(x):
    """Hessian of the MSE of a line on inputs x [..., n, 1]: (2/n) sum phi phi^T, the same at every theta."""
    phi = features(x)
    return 2 * phi.transpose(-1, -2) @ phi / x.shape[-2]


H_S = hessian_by_hand(lines.support_x)
for kind, mask in [("wide", wide), ("narrow", ~wide)]:
    c = H_S[mask][0]
    print(f"{kind:6s} support Hessian [[{c[0, 0]:.3f}, {c[0, 1]:.3f}], [{c[1, 0]:.3f}, {c[1, 1]:.3f}]]: "
          f"alpha x curvature = {ALPHA * c[0, 0]:.3f} along the slope, {ALPHA * c[1, 1]:.3f} along the intercept")

# %% [markdown]
# With $\alpha = 0.35$, one inner step removes most of a wide task's slope error (the factor
# $1 - \alpha\lambda$ is about 0.2) but hardly touches a narrow task's (about 0.9). Keep these
# numbers in mind; they decide where each method below ends up.
#
# Now the model in PyTorch. `loss`, `adapt` and `meta_loss` are the objective of section 2.1,
# written functionally with `torch.func`: `grad(loss)` is the function that returns the gradient of
# `loss` with respect to its first argument, and `vmap` runs the per-task computation over the
# whole batch of tasks at once.

# %%
def predict(theta, x):
    return theta[0] * x + theta[1]


def loss(theta, x, y):
    return (predict(theta, x) - y).pow(2).mean()


def adapt(theta, x, y, alpha=ALPHA, steps=1):
    """The inner loop: `steps` gradient steps on the support set, starting from theta."""
    for _ in range(steps):
        theta = theta - alpha * grad(loss)(theta, x, y)
    return theta


def meta_loss(theta, tasks, alpha=ALPHA, steps=1):
    """The outer objective: query loss after adaptation, averaged over the tasks."""
    def one_task(support_x, support_y, query_x, query_y):
        return loss(adapt(theta, support_x, support_y, alpha, steps), query_x, query_y)
    return vmap(one_task)(tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y).mean()


theta0 = torch.tensor([-1.0, 1.0], dtype=f64)
print(f"at theta0 = {theta0.tolist()}: query loss before adaptation {vmap(loss, (None, 0, 0))(theta0, lines.query_x, lines.query_y).mean():.3f}, "
      f"after one inner step {meta_loss(theta0, lines):.3f}")

# %% [markdown]
# ### Five ways to get the meta-gradient
#
# We now compute $\nabla_\theta$ of the meta-loss at $\theta_0$ in five ways.
#
# 1. **By hand**: the boxed formula, with the hand-derived Hessian.
# 2. **Autograd, the classic way**: differentiate the inner step with
#    `torch.autograd.grad(..., create_graph=True)`, so that the inner gradient is itself part of
#    the graph, then backpropagate the query loss to $\theta$.
# 3. **`torch.func.grad`** of the whole `meta_loss` function: a `grad` inside a `grad`.
# 4. **Central finite differences**, which know nothing about derivatives:
#    $\partial J/\partial\theta_j \approx \big(J(\theta + \varepsilon e_j) - J(\theta - \varepsilon e_j)\big) / 2\varepsilon$.
# 5. **First order**: the query gradient at the adapted parameters, without the factor
#    $I - \alpha H_S$.

# %%
def meta_gradient_by_hand(theta, tasks, alpha=ALPHA, steps=1):
    """(I - alpha H_S)^steps grad L_Q(phi_steps), averaged over tasks (H_S is constant: the loss is quadratic)."""
    phi = theta.expand(len(tasks), 2)
    for _ in range(steps):
        phi = phi - alpha * gradient_by_hand(phi, tasks.support_x, tasks.support_y)
    g = gradient_by_hand(phi, tasks.query_x, tasks.query_y)
    jacobian = torch.eye(2, dtype=f64) - alpha * hessian_by_hand(tasks.support_x)
    for _ in range(steps):
        g = (jacobian @ g[..., None])[..., 0]
    return g.mean(0)


def meta_gradient_autograd(theta, tasks, alpha=ALPHA, steps=1):
    """Second-order MAML with torch.autograd: create_graph=True keeps the inner gradient differentiable."""
    theta = theta.clone().requires_grad_(True)
    total = 0.0
    for support_x, support_y, query_x, query_y in tasks.unbind():
        phi = theta
        for _ in range(steps):
            (g,) = torch.autograd.grad(loss(phi, support_x, support_y), phi, create_graph=True)
            phi = phi - alpha * g
        total = total + loss(phi, query_x, query_y)
    (meta_grad,) = torch.autograd.grad(total / len(tasks), theta)
    return meta_grad


def finite_differences(f, theta, eps=1e-6):
    return torch.stack([(f(theta + eps * e) - f(theta - eps * e)) / (2 * eps) for e in torch.eye(len(theta), dtype=f64)])


def fomaml_direction(theta, tasks, alpha=ALPHA, steps=1):
    """First-order MAML: the query gradient at the adapted parameters, averaged over tasks."""
    def one_task(support_x, support_y, query_x, query_y):
        return grad(loss)(adapt(theta, support_x, support_y, alpha, steps), query_x, query_y)
    return vmap(one_task)(tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y).mean(0)


def compare(rows: dict, reference: str) -> None:
    print(f"  {'method':36s} {'d/d slope':>11s} {'d/d intercept':>14s}   max |difference| to {reference}")
    for name, g in rows.items():
        print(f"  {name:36s} {g[0]:11.6f} {g[1]:14.6f}   {(g - rows[reference]).abs().max():.1e}")


check = {}
for steps in (1, 3):
    rows = {
        "by hand, (I - aH)^k grad L_Q": meta_gradient_by_hand(theta0, lines, steps=steps),
        "torch.autograd, create_graph=True": meta_gradient_autograd(theta0, lines, steps=steps),
        "torch.func.grad of meta_loss": grad(meta_loss)(theta0, lines, steps=steps),
        "central finite differences": finite_differences(lambda t: meta_loss(t, lines, steps=steps), theta0),
        "first order (no Hessian term)": fomaml_direction(theta0, lines, steps=steps),
    }
    check[steps] = rows
    print(f"meta-gradient at theta0 with {steps} inner step{'s' if steps > 1 else ''}:")
    compare(rows, reference="by hand, (I - aH)^k grad L_Q")

# %% [markdown]
# The three exact methods agree to the last digits of double precision, and finite differences
# agree to $10^{-10}$ or better, the error of the difference quotient itself. The formula is right,
# and PyTorch computes it. The first-order row is the odd one out: with one inner step it has the
# right signs but is several times too large; with three inner steps even the sign of its slope
# component is wrong. Section 2.4 studies that gap.
#
# Since the loss is quadratic, $H_S$ is the same at every point of the inner loop, and the product
# of section 2.2 is the power $(I - \alpha H_S)^k$. For a network the factors differ, and their
# order matters (Exercise 2.1).
#
# ## 2.4 First-order MAML and Reptile: what they drop
#
# **First-order MAML** (FOMAML; Finn et al. 2017, section 5.2) drops the Jacobian of the inner loop:
# it treats $\phi$ as if it did not depend on $\theta$ through the inner gradients and uses
#
# $$
# g_{\text{FO}} = \nabla\mathcal{L}^Q(\phi_k) \quad\text{instead of}\quad
# g_{\text{MAML}} = \prod_{j=0}^{k-1}\big(I - \alpha H_S(\phi_j)\big)\, \nabla\mathcal{L}^Q(\phi_k).
# $$
#
# The error is exactly the Hessian term; for one step it is $\alpha H_S \nabla \mathcal{L}^Q(\phi)$,
# small when $\alpha \lVert H_S\rVert$ is small. In exchange FOMAML needs no second derivatives and
# no graph through the inner loop.
#
# **Reptile** (Nichol, Achiam & Schulman, 2018) goes further and drops the distinction between the
# meta-gradient and the inner loop: run $k$ steps of gradient descent on the task from $\theta$,
# then move $\theta$ towards where they ended, $\theta \leftarrow \theta + \varepsilon(\phi_k - \theta)$.
# Reptile does not split a task into support and query; to compare like with like we let it take
# its steps on the support set and then one more on the query set, so it sees the same gradients as
# FOMAML. Its update direction, divided by the total step length, is the average of the gradients
# met on the way: $g_{\text{Rep}} = (\theta - \phi_{k+1}) / ((k+1)\alpha)$.
#
# ### What the approximations keep: a Taylor expansion
#
# Nichol et al. expand all three updates in powers of $\alpha$. Take one inner step and write
# $\bar g_S = \nabla\mathcal{L}^S(\theta)$, $\bar g_Q = \nabla\mathcal{L}^Q(\theta)$ and $H_S, H_Q$
# for the gradients and Hessians *at the initial point* $\theta$. To first order,
# $\nabla\mathcal{L}^Q(\phi) = \bar g_Q - \alpha H_Q \bar g_S + O(\alpha^2)$, hence
#
# $$
# \begin{aligned}
# g_{\text{MAML}} &= (I - \alpha H_S)(\bar g_Q - \alpha H_Q \bar g_S) + O(\alpha^2)
#   &&= \bar g_Q - \alpha\,(H_Q \bar g_S + H_S \bar g_Q) + O(\alpha^2),\\
# g_{\text{FO}} &&&= \bar g_Q - \alpha\, H_Q \bar g_S + O(\alpha^2),\\
# 2\,g_{\text{Rep}} &= \bar g_S + \nabla\mathcal{L}^Q(\phi) &&= \bar g_S + \bar g_Q - \alpha\, H_Q \bar g_S + O(\alpha^2).
# \end{aligned}
# $$
#
# The term in brackets is a gradient in disguise: $H_Q \bar g_S + H_S \bar g_Q = \nabla_\theta
# \big(\bar g_S \cdot \bar g_Q\big)$, the gradient of the **inner product between the support
# gradient and the query gradient**. Averaged over tasks and over which points land in the support
# or query set (the two are exchangeable, so $\mathbb{E}[H_Q\bar g_S] = \mathbb{E}[H_S\bar g_Q]$):
#
# $$
# \begin{aligned}
# \mathbb{E}[g_{\text{MAML}}] &= \nabla\, \mathbb{E}[\mathcal{L}] - \alpha\, \nabla\, \mathbb{E}[\bar g_S\cdot\bar g_Q] + O(\alpha^2),\\
# \mathbb{E}[g_{\text{FO}}] &= \nabla\, \mathbb{E}[\mathcal{L}] - \tfrac{\alpha}{2}\, \nabla\, \mathbb{E}[\bar g_S\cdot\bar g_Q] + O(\alpha^2),\\
# \mathbb{E}[2\,g_{\text{Rep}}] &= 2\,\nabla\, \mathbb{E}[\mathcal{L}] - \tfrac{\alpha}{2}\, \nabla\, \mathbb{E}[\bar g_S\cdot\bar g_Q] + O(\alpha^2).
# \end{aligned}
# $$
#
# All three descend the ordinary average loss, which is what multi-task training does, and all three
# *climb the inner product* between gradients computed on different data of the same task. A large
# inner product means that a step taken on the support set also lowers the query loss: adaptation
# that generalises within the task. That second term is what makes these methods meta-learners.
# MAML gives it full weight; FOMAML half; Reptile half as well, next to a loss term twice as
# strong, so relative to its loss term it is four times weaker than MAML. The identity behind
# all this is easy to check on one task of the laboratory:

# %%
support_x, support_y, query_x, query_y = next(lines.unbind())
inner_product = lambda t: grad(loss)(t, support_x, support_y) @ grad(loss)(t, query_x, query_y)
by_autograd = grad(inner_product)(theta0)
by_hand = hessian_by_hand(query_x) @ gradient_by_hand(theta0, support_x, support_y) + hessian_by_hand(support_x) @ gradient_by_hand(theta0, query_x, query_y)
print(f"grad(g_S . g_Q) = {by_autograd.tolist()}\nH_Q g_S + H_S g_Q = {by_hand.tolist()}")

# %% [markdown]
# ### How close are the directions?
#
# The expansion says that the approximations agree with MAML when $\alpha$ is small and drift away
# as it grows. How far, in practice? We measure the cosine similarity between each approximate
# direction and the true meta-gradient (all 200 tasks in the batch), at many points $\theta$ spread
# over the region $[-3, 3]\times[-2.5, 2.5]$ that the next section draws, and average. On the left
# we vary $\alpha$ with one inner step; on the right we vary the number of inner steps.

# %%
def reptile_direction(theta, tasks, alpha=ALPHA, steps=1):
    """Reptile: `steps` steps on the support set, one on the query set; (theta - phi) / total step length."""
    def one_task(support_x, support_y, query_x, query_y):
        phi = adapt(theta, support_x, support_y, alpha, steps)
        phi = phi - alpha * grad(loss)(phi, query_x, query_y)
        return (theta - phi) / (alpha * (steps + 1))
    return vmap(one_task)(tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y).mean(0)


def mean_cosines(points, alpha, steps):
    """Average cosine similarity of FOMAML and Reptile to the MAML meta-gradient over `points` [n, 2]."""
    true = vmap(lambda t: grad(meta_loss)(t, lines, alpha, steps))(points)
    out = {}
    for name, rule in [("FOMAML", fomaml_direction), ("Reptile", reptile_direction)]:
        approx = vmap(lambda t: rule(t, lines, alpha, steps))(points)
        out[name] = F.cosine_similarity(approx, true, dim=1).mean().item()
    return out


g = torch.Generator().manual_seed(0)
n_points = budget(full=400, quick=40)
points = torch.stack([6 * torch.rand(n_points, generator=g, dtype=f64) - 3, 5 * torch.rand(n_points, generator=g, dtype=f64) - 2.5], dim=1)
alphas = budget(full=[0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45], quick=[0.01, 0.2, 0.35, 0.45])
inner_steps = budget(full=[1, 2, 3, 4, 5, 6, 8, 10], quick=[1, 3, 5])
step_alphas = (0.1, ALPHA)

start = time.perf_counter()
vs_alpha = [mean_cosines(points, a, 1) for a in alphas]
vs_steps = {a: [mean_cosines(points, a, k) for k in inner_steps] for a in step_alphas}
print(f"{n_points} points, computed in {time.perf_counter() - start:.1f} s")
for a, c in zip(alphas, vs_alpha):
    print(f"  alpha={a:.2f}, 1 step:  cos(FOMAML, MAML) {c['FOMAML']:.3f}   cos(Reptile, MAML) {c['Reptile']:.3f}")
for a in step_alphas:
    for k, c in zip(inner_steps, vs_steps[a]):
        print(f"  alpha={a:.2f}, {k:2d} steps: cos(FOMAML, MAML) {c['FOMAML']:.3f}   cos(Reptile, MAML) {c['Reptile']:.3f}")

# %%
METHOD_COLOURS = {"MAML": "#d62728", "FOMAML": "#ff7f0e", "Reptile": "#2ca02c", "multi-task": "#555555"}
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=True)
for name in ("FOMAML", "Reptile"):
    axes[0].plot(alphas, [c[name] for c in vs_alpha], "o-", color=METHOD_COLOURS[name], label=name)
    for a, style in zip(step_alphas, ("--", "-")):
        axes[1].plot(inner_steps, [c[name] for c in vs_steps[a]], "o" + style, color=METHOD_COLOURS[name], label=f"{name}, alpha = {a}")
axes[0].axvline(ALPHA, color="k", lw=0.8, ls=":")
axes[0].annotate(f"alpha = {ALPHA}, used below", (ALPHA, 0.5), xytext=(-8, 0), textcoords="offset points", ha="right", fontsize=8)
axes[0].set_xlabel("inner learning rate alpha (one inner step)")
axes[0].set_ylabel("mean cosine similarity to the MAML meta-gradient")
axes[0].set_title("Approximations drift as alpha grows")
axes[1].set_xlabel("inner steps k")
axes[1].set_title("... and as the inner loop gets longer")
axes[1].set_xticks(inner_steps)
axes[0].legend()
axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
for ax in axes:
    ax.axhline(1, color="k", lw=0.5)
fig.tight_layout()
plt.show()

# %% [markdown]
# For small $\alpha$ all three directions coincide, as the expansion promised. As $\alpha$ grows,
# FOMAML stays closer and Reptile drifts further, because its direction contains the multi-task
# gradient at full strength: at the $\alpha = 0.35$ used below the mean cosines are 0.92 and 0.81,
# at $\alpha = 0.45$ they are 0.74 and 0.33. Longer inner loops multiply more Hessian factors, and
# the dropped term grows with them: with $\alpha = 0.1$ the agreement decays steadily with $k$,
# with $\alpha = 0.35$ it collapses as soon as there are two inner steps. Even a mean cosine of
# 0.9 hides where the disagreement is. Far from any optimum every sensible direction points
# downhill; the directions part ways where it matters, near the end of training. The next section
# shows where they end.
#
# ## 2.5 Where each rule leads
#
# The meta-loss $J(\theta) = \frac{1}{200}\sum_i \mathcal{L}^Q_i(\phi_i(\theta))$ is a function of two
# numbers, so we can draw it. On top of it we run four training rules from the same starting point
# with the same step size $\beta$, each on all 200 tasks at every step:
#
# - **MAML**: $\theta \leftarrow \theta - \beta\,\nabla J(\theta)$, the exact meta-gradient;
# - **FOMAML**: $\theta \leftarrow \theta - \beta\, g_{\text{FO}}$;
# - **Reptile**: $\theta \leftarrow \theta - \beta\, g_{\text{Rep}}$ (one step on the support set, one on the query set);
# - **multi-task**: gradient descent on the plain loss of every task on all its 20 points, no
#   adaptation at all (Chapter 1's pretrained baseline).

# %%
def multitask_loss(theta, tasks):
    x = torch.cat([tasks.support_x, tasks.query_x], dim=1)
    y = torch.cat([tasks.support_y, tasks.query_y], dim=1)
    return vmap(loss, in_dims=(None, 0, 0))(theta, x, y).mean()


rules = {
    "MAML": lambda t: grad(meta_loss)(t, lines),
    "FOMAML": lambda t: fomaml_direction(t, lines),
    "Reptile": lambda t: reptile_direction(t, lines),
    "multi-task": lambda t: grad(multitask_loss)(t, lines),
}
BETA, META_STEPS = 0.5, budget(full=300, quick=150)
theta_start = torch.tensor([-2.5, 2.0], dtype=f64)
paths = {}
start = time.perf_counter()
for name, rule in rules.items():
    theta, path = theta_start, [theta_start]
    for _ in range(META_STEPS):
        theta = theta - BETA * rule(theta)
        path.append(theta)
    paths[name] = torch.stack(path)
print(f"{len(rules)} x {META_STEPS} meta-steps in {time.perf_counter() - start:.1f} s")


def after_adaptation(theta, tasks):
    return meta_loss(theta, tasks).item()


print(f"{'rule':11s} {'ends at (slope, intercept)':>27s} {'|update| at the end':>20s} {'J(theta)':>9s}"
      f" {'wide tasks':>11s} {'narrow tasks':>13s}   (query MSE after one inner step)")
for name, path in paths.items():
    theta = path[-1]
    print(f"{name:11s} {f'({theta[0]:+.3f}, {theta[1]:+.3f})':>27s} {rules[name](theta).norm():20.1e} "
          f"{after_adaptation(theta, lines):9.3f} {after_adaptation(theta, lines[wide]):11.3f} {after_adaptation(theta, lines[~wide]):13.3f}")
end_slope = {name: path[-1, 0].item() for name, path in paths.items()}
if not quick_mode():  # the claims below: MAML alone ends on the narrow tasks' side, at the lowest meta-loss
    assert end_slope["MAML"] < 0 < end_slope["FOMAML"] < end_slope["Reptile"] < end_slope["multi-task"], end_slope
    assert min(paths, key=lambda name: after_adaptation(paths[name][-1], lines)) == "MAML"

# %%
resolution = budget(full=(121, 101), quick=(41, 35))
slopes = torch.linspace(-3, 3, resolution[0], dtype=f64)
intercepts = torch.linspace(-2.5, 2.5, resolution[1], dtype=f64)
S, I = torch.meshgrid(slopes, intercepts, indexing="xy")
J = vmap(lambda t: meta_loss(t, lines))(torch.stack([S.flatten(), I.flatten()], dim=1)).reshape(S.shape)

fig, ax = plt.subplots(figsize=(9, 6.4))
levels = torch.logspace(math.log10(J.min() * 1.03), math.log10(J.max()), 14)
contours = ax.contour(S, I, J, levels=levels, cmap="Greys", vmin=-J.max() / 3, linewidths=0.9)
ax.clabel(contours, fontsize=7, fmt="%.2f")
for kind, mask in [("wide", wide), ("narrow", ~wide)]:
    ax.scatter(lines.info["slope"][mask], lines.info["intercept"][mask], s=8, color=KIND_COLOURS[kind], alpha=0.35, label=f"{kind} tasks' own lines")
for name, path in paths.items():
    ax.plot(path[:, 0], path[:, 1], color=METHOD_COLOURS[name], lw=1.8, label=name)
    ax.plot(path[-1, 0], path[-1, 1], "o", color=METHOD_COLOURS[name], ms=9, markeredgecolor="k")
ax.plot(*theta_start, "k*", ms=12, label="start")
ax.set_xlabel("slope  theta_1"), ax.set_ylabel("intercept  theta_2")
ax.set_title("MAML meta-loss J(theta) (contours) and four training rules from the same start")
ax.legend(loc="lower right", fontsize=8, ncols=2)
plt.show()

# %% [markdown]
# The four rules nearly agree on the intercept (all end within 0.08 of zero, between the two kinds'
# intercepts) and disagree on the slope. MAML ends at the bottom of the meta-loss, as it must,
# since it follows its gradient. The other three end where *their* update vanishes, which is not a
# minimum of $J$: none of them is the gradient of the function we asked to minimise. Multi-task
# training ends near the wide tasks' slope (+1.15); MAML ends on the narrow tasks' side (-0.53),
# trading a little on the wide tasks (query error after adaptation 0.21 → 0.36) for a lot on the
# narrow ones (0.73 → 0.28), which lowers the meta-loss from 0.47 to 0.32. FOMAML and Reptile fall
# in between.
#
# ### Why there: every end point is a weighted average
#
# Because each loss is quadratic, $\nabla\mathcal{L}(\theta) = H\theta - r$ with $r = \frac{2}{n}\sum_j y_j\varphi(x_j)$,
# every update rule is *linear* in $\theta$, and its end point solves a $2\times 2$ linear system.
# With $M_i = I - \alpha H_{S,i}$, the inner step is $\phi_i = M_i\theta + \alpha r_{S,i}$, and
# setting the average update to zero gives
#
# | rule | end point solves |
# |---|---|
# | MAML | $\mathbb{E}[M H_Q M]\,\theta = \mathbb{E}[M(r_Q - \alpha H_Q r_S)]$ |
# | FOMAML | $\mathbb{E}[H_Q M]\,\theta = \mathbb{E}[r_Q - \alpha H_Q r_S]$ |
# | Reptile | $\mathbb{E}[H_S + H_Q M]\,\theta = \mathbb{E}[r_S + r_Q - \alpha H_Q r_S]$ |
# | multi-task | $\mathbb{E}[H]\,\theta = \mathbb{E}[r]$ (all 20 points of each task) |

# %%
def rhs_by_hand(x, y):
    """r = (2/n) sum y phi(x), so that grad L(theta) = H theta - r."""
    return 2 * (features(x).transpose(-1, -2) @ y)[..., 0] / x.shape[-2]


HS, HQ = hessian_by_hand(lines.support_x), hessian_by_hand(lines.query_x)
rS, rQ = rhs_by_hand(lines.support_x, lines.support_y), rhs_by_hand(lines.query_x, lines.query_y)
all_x, all_y = torch.cat([lines.support_x, lines.query_x], 1), torch.cat([lines.support_y, lines.query_y], 1)
M = torch.eye(2, dtype=f64) - ALPHA * HS
target = (rQ - ALPHA * (HQ @ rS[..., None])[..., 0])[..., None]
systems = {
    "MAML": (M @ HQ @ M, M @ target),
    "FOMAML": (HQ @ M, target),
    "Reptile": (HS + HQ @ M, rS[..., None] + target),
    "multi-task": (hessian_by_hand(all_x), rhs_by_hand(all_x, all_y)[..., None]),
}
fixed_points = {name: torch.linalg.solve(A.mean(0), b.mean(0))[:, 0] for name, (A, b) in systems.items()}
for name, theta in fixed_points.items():
    print(f"{name:11s} solves to ({theta[0]:+.6f}, {theta[1]:+.6f});  training reached it within {(theta - paths[name][-1]).abs().max():.0e}")

# %% [markdown]
# The linear systems predict the end points of training to many digits. They also explain them.
# Along the slope, the Hessians are nearly diagonal (the inputs are centred), so each rule's end
# slope is an average of the tasks' slopes, weighted by a number that depends only on the task's
# curvature along the slope, $c_S$ on its support inputs and $c_Q$ on its query inputs. Reading the
# weights off the systems above:
#
# | rule | weight of a task | |
# |---|---|---|
# | multi-task | $c$ | trusts the tasks whose data pin the slope down |
# | Reptile | $c_S + c_Q(1 - \alpha c_S)$ | |
# | FOMAML | $c_Q(1 - \alpha c_S)$ | one factor $1 - \alpha c_S$ |
# | MAML | $c_Q(1 - \alpha c_S)^2$ | two factors: one from the inner step, one from its Jacobian |
#
# The factor $1 - \alpha c_S$ is how much of the task's error survives the inner step. MAML counts
# it twice: a task that one step solves anyway hardly matters to where you start.

# %%
kinds = {"wide": wide, "narrow": ~wide}
c_S = {k: HS[m][:, 0, 0].mean().item() for k, m in kinds.items()}
c_Q = {k: HQ[m][:, 0, 0].mean().item() for k, m in kinds.items()}
c_all = {k: hessian_by_hand(all_x)[m][:, 0, 0].mean().item() for k, m in kinds.items()}
mean_slope = {k: lines.info["slope"][m].mean().item() for k, m in kinds.items()}
weight_rules = {
    "multi-task": lambda k: c_all[k],
    "Reptile": lambda k: c_S[k] + c_Q[k] * (1 - ALPHA * c_S[k]),
    "FOMAML": lambda k: c_Q[k] * (1 - ALPHA * c_S[k]),
    "MAML": lambda k: c_Q[k] * (1 - ALPHA * c_S[k]) ** 2,
}
print(f"curvature along the slope: wide c_S = {c_S['wide']:.3f}, c_Q = {c_Q['wide']:.3f};  narrow c_S = {c_S['narrow']:.3f}, c_Q = {c_Q['narrow']:.3f}")
print(f"mean slope: wide {mean_slope['wide']:+.3f}, narrow {mean_slope['narrow']:+.3f}\n")
print(f"{'rule':11s} {'weight wide':>12s} {'weight narrow':>14s} {'share of wide':>14s} {'predicted slope':>16s} {'reached slope':>14s}")
for name, w in weight_rules.items():
    share = w("wide") / (w("wide") + w("narrow"))
    predicted = share * mean_slope["wide"] + (1 - share) * mean_slope["narrow"]
    print(f"{name:11s} {w('wide'):12.3f} {w('narrow'):14.3f} {share:14.2f} {predicted:+16.3f} {paths[name][-1, 0]:+14.3f}")
gaps = {name: abs(share * mean_slope["wide"] + (1 - share) * mean_slope["narrow"] - paths[name][-1, 0].item())
        for name, w in weight_rules.items() for share in [w("wide") / (w("wide") + w("narrow"))]}
print("\n|predicted - reached slope|: " + ", ".join(f"{name} {gap:.3f}" for name, gap in gaps.items()))
print(f"MAML's weight relative to multi-task training: wide tasks {weight_rules['MAML']('wide') / weight_rules['multi-task']('wide'):.3f}, "
      f"narrow tasks {weight_rules['MAML']('narrow') / weight_rules['multi-task']('narrow'):.2f}")

# %% [markdown]
# The one-line weights predict the end slopes to within about two hundredths for three rules (the
# largest of their gaps is MAML's, 0.022) and to 0.068 for FOMAML; they leave out what the full
# systems above keep, the small coupling between slope and intercept and the spread of curvatures
# within each kind, which is why they are close rather than exact. Multi-task training
# gives the wide tasks 90% of the say, because their data pin down the slope (large $c$); it ends
# up near their slope. MAML reverses the order: a wide task's slope is almost fixed by a single
# inner step ($1 - \alpha c_S \approx 0.21$, squared $\approx 0.05$), so its weight shrinks
# about 25-fold, while a narrow task keeps three quarters of its weight, because gradient descent
# can barely move its slope. The meta-learned initialisation spends its accuracy **where
# adaptation cannot help**. FOMAML counts the surviving error once and lands in between. Reptile,
# with one support step and one query step, stays close to multi-task training; longer inner loops
# strengthen its inner-product term relative to its loss term (Nichol et al.: in proportion to
# $k(k-1)/2$ against $k$ for $k$ steps), and its end point moves towards MAML's:

# %%
for k in (1, 3, 10):
    theta = theta_start
    for _ in range(META_STEPS):
        theta = theta - BETA * reptile_direction(theta, lines, steps=k)
    print(f"Reptile with {k:2d} support step{'s' if k > 1 else ' '} + 1 query step ends at slope {theta[0]:+.3f}   (MAML: {paths['MAML'][-1, 0]:+.3f})")

# %% [markdown]
# This is the whole idea of MAML on two parameters, and it is why the Hessian term is not a
# detail.
#
# ## 2.6 Hessian-vector products: second order without the Hessian
#
# The meta-gradient contains a Hessian, but never on its own: always multiplied by a vector,
# $H_S\, v$ with $v = \nabla\mathcal{L}^Q(\phi)$. A **Hessian-vector product** can be computed
# without ever forming $H$ (Pearlmutter, 1994), in time a small multiple of one gradient
# evaluation and memory $O(P)$ for $P$ parameters, where $H$ itself would need $O(P^2)$. Two
# routes:
#
# - **reverse over reverse** ("double backward"): $Hv = \nabla_\theta\big(\nabla\mathcal{L}(\theta)\cdot v\big)$,
#   the gradient of a scalar, computed by `torch.autograd.grad` with `create_graph=True` and a
#   second call, or by `torch.func.vjp` of `grad(f)`;
# - **forward over reverse**: $Hv = \frac{d}{dr}\nabla\mathcal{L}(\theta + r v)\big|_{r=0}$, the
#   directional derivative of the gradient, which is `torch.func.jvp(grad(f), (theta,), (v,))`.
#   This is Pearlmutter's $\mathcal{R}$-operator; in theory the cheapest of the two, although on
#   very small networks the bookkeeping of `torch.func` can dominate (we time both below).
#
# First on the laboratory, where $H$ is known exactly:

# %%
f = lambda t: loss(t, support_x, support_y)
v = torch.tensor([0.3, -1.2], dtype=f64)

theta_leaf = theta0.clone().requires_grad_(True)
(g_first,) = torch.autograd.grad(f(theta_leaf), theta_leaf, create_graph=True)
(hvp_double_backward,) = torch.autograd.grad(g_first @ v, theta_leaf)
hvp_vjp = vjp(grad(f), theta0)[1](v)[0]
hvp_jvp = jvp(grad(f), (theta0,), (v,))[1]
explicit = hessian(f)(theta0) @ v
for name, value in [("H v, H from torch.func.hessian", explicit), ("by hand, (2/n) sum phi phi^T v", hessian_by_hand(support_x) @ v),
                    ("double backward (torch.autograd)", hvp_double_backward), ("reverse over reverse (func.vjp)", hvp_vjp),
                    ("forward over reverse (func.jvp)", hvp_jvp)]:
    print(f"{name:34s} {value.tolist()}   max |diff| {(value - explicit).abs().max():.0e}")

# %% [markdown]
# On two parameters forming $H$ costs nothing. On a network it is a different story. Take the
# sinusoid regressor of the MAML paper (`mlp(1, 1)`: two hidden layers of 40 units, 1,761
# parameters) and one sinusoid task of Chapter 1. We flatten the parameters into one vector so
# that `torch.func.hessian` can build the full $1761 \times 1761$ matrix, and compare it with a
# single Hessian-vector product.

# %%
seed_everything(0)
net = mlp(1, 1).to(device)
names = [name for name, _ in net.named_parameters()]
shapes = [p.shape for p in net.parameters()]
theta_net = torch.cat([p.detach().flatten() for p in net.parameters()])
P = theta_net.numel()


def unflatten(vector):
    """One flat parameter vector -> the {name: tensor} dict functional_call expects."""
    return dict(zip(names, (chunk.view(shape) for chunk, shape in zip(vector.split([s.numel() for s in shapes]), shapes))))


def net_loss(vector, x, y):
    # the mean squared error written out: F.mse_loss does not support jvp of its gradient in PyTorch 2.x
    return (functional_call(net, unflatten(vector), (x,)) - y).pow(2).mean()


sinusoids = SinusoidTasks(k_shot=10, q_query=10, seed=0, device=device)
task = sinusoids.sample(1)
xs, ys, xq, yq = next(task.unbind())
f_net = lambda t: net_loss(t, xs, ys)
u = torch.randn(P, device=device)


def seconds(fn, repeats=5):
    """Wall-clock time of fn(): the fastest of `repeats` runs, the one least disturbed by other processes."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def gradient(f, theta):
    theta = theta.detach().requires_grad_(True)
    return torch.autograd.grad(f(theta), theta)[0]


def hvp_double_backward(f, theta, vector):
    theta = theta.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(f(theta), theta, create_graph=True)
    return torch.autograd.grad(g @ vector, theta)[0]


full_hessian = hessian(f_net)(theta_net)
hvp_net = hvp_double_backward(f_net, theta_net, u)
many = budget(full=200, quick=20)
timing = {
    "full Hessian (torch.func.hessian)": seconds(lambda: hessian(f_net)(theta_net), repeats=budget(full=5, quick=2)),
    "one HVP, double backward": seconds(lambda: hvp_double_backward(f_net, theta_net, u), repeats=many),
    "one HVP, forward over reverse": seconds(lambda: jvp(grad(f_net), (theta_net,), (u,)), repeats=many),
    "one gradient": seconds(lambda: gradient(f_net, theta_net), repeats=many),
}
print(f"P = {P} parameters; the Hessian has {full_hessian.numel():,} entries ({full_hessian.numel() * 4 / 1e6:.1f} MB in float32)")
for name, t in timing.items():
    print(f"  {name:34s} {1000 * t:8.3f} ms")
print(f"max |H u - hvp(u)| = {(full_hessian @ u - hvp_net).abs().max():.1e}   (max |H u| = {(full_hessian @ u).abs().max():.1f}, float32)")

# %% [markdown]
# The product agrees with the explicit matrix to float32 precision and costs a small multiple of a
# gradient. The full Hessian is $P$ such products, one per column; `torch.func.hessian` runs them
# as one vectorised batch, which on 1,761 parameters still takes only a fraction of a second, but
# nothing can shrink its $P^2$ memory. MAML never needs the matrix: backpropagating through an
# inner step *is* a Hessian-vector product. We check that on
# this network: the second-order meta-gradient from autograd against the query gradient at the
# adapted point, corrected by one product, $g - \alpha H_S g$.

# %%
alpha_net = 0.01
theta_leaf = theta_net.clone().requires_grad_(True)
(g_support,) = torch.autograd.grad(f_net(theta_leaf), theta_leaf, create_graph=True)
phi_net = theta_leaf - alpha_net * g_support
(maml_autograd,) = torch.autograd.grad(net_loss(phi_net, xq, yq), theta_leaf)

g_query = grad(net_loss)(phi_net.detach(), xq, yq)  # the first-order part
maml_by_hvp = g_query - alpha_net * jvp(grad(f_net), (theta_net,), (g_query,))[1]
print(f"autograd vs g - alpha H_S g: max |diff| = {(maml_autograd - maml_by_hvp).abs().max():.1e}"
      f"  (max |meta-gradient| = {maml_autograd.abs().max():.2f})")

conv = conv4(out_features=5)
P_conv = sum(p.numel() for p in conv.parameters())
print(f"The Omniglot conv4 has {P_conv:,} parameters: its Hessian would take {P_conv**2 * 4 / 1e9:,.0f} GB in float32, "
      f"a Hessian-vector product {P_conv * 4 / 1e6:.2f} MB.")

# %% [markdown]
# ## 2.7 What second order costs, measured
#
# A Hessian-vector product is cheap in *time*. The price of second-order MAML is paid in *memory*.
# To backpropagate through $k$ inner steps, autograd must keep everything each step computed: the
# activations of its forward pass, and, since the inner gradient itself is differentiated
# (`create_graph=True`), the intermediate results of its backward pass too. First-order MAML
# treats each inner gradient as a constant, so each step's graph is freed as soon as the gradient
# is taken; only the final forward pass on the query set is kept.
#
# We measure both on the setting of the MAML paper's sinusoid experiment: the 40-40 MLP,
# meta-batches of 25 tasks with 10 support and 10 query points, $\alpha = 0.01$. To run the 25
# tasks at once, every task gets its own copy of the weights, `p.expand(25, ...)`, and the MLP
# forward pass uses batched matrix products. Memory is counted exactly, not by sampling the
# process: `mlhelpers.memory.RetainedGraphMemory` adds up the tensors autograd has saved for the
# backward pass and still holds when the meta-loss is ready to be differentiated.

# %%
def batched_mlp(weights, x):
    """mlp(1, 1) forward with one set of weights per task: weights [W1, b1, W2, b2, W3, b3], each [tasks, ...]."""
    layers = len(weights) // 2
    for i in range(layers):
        W, b = weights[2 * i], weights[2 * i + 1]
        x = x @ W.transpose(-1, -2) + b.unsqueeze(-2)
        if i < layers - 1:
            x = torch.relu(x)
    return x


def batched_meta_loss(params, tasks, steps, alpha=0.01, second_order=True):
    """MAML's meta-loss on a batch of tasks; second_order=False treats inner gradients as constants (FOMAML)."""
    weights = [p.expand(len(tasks), *p.shape) for p in params]  # one copy per task, no memory copied
    for _ in range(steps):
        per_task = (batched_mlp(weights, tasks.support_x) - tasks.support_y).pow(2).mean(dim=(1, 2))
        grads = torch.autograd.grad(per_task.sum(), weights, create_graph=second_order)
        weights = [w - alpha * g for w, g in zip(weights, grads)]
    return F.mse_loss(batched_mlp(weights, tasks.query_x), tasks.query_y)


seed_everything(0)
net = mlp(1, 1).to(device)
params = list(net.parameters())
batch = SinusoidTasks(k_shot=10, q_query=10, seed=1, device=device).sample(25)
step_counts = budget(full=list(range(1, 11)), quick=[1, 2, 3])
rounds = budget(full=30, quick=3)
cost = {True: {"ms": [], "MB": []}, False: {"ms": [], "MB": []}}
cosine_fo = []
for steps in step_counts:
    meta_grads = {}
    for second_order in (True, False):
        with RetainedGraphMemory() as memory:
            value = batched_meta_loss(params, batch, steps, second_order=second_order)
        cost[second_order]["MB"].append(memory.alive_bytes() / 1e6)
        meta_grads[second_order] = torch.cat([g.flatten() for g in torch.autograd.grad(value, params)])
        del value
    cosine_fo.append(F.cosine_similarity(meta_grads[True], meta_grads[False], dim=0).item())

# Time every setting once per round, for many rounds, and keep each setting's fastest run: a burst
# of load from other processes then hits all settings alike instead of spoiling one of them.
fastest = {(so, k): math.inf for so in (True, False) for k in step_counts}
for _ in range(rounds):
    for steps in step_counts:
        for second_order in (True, False):
            run = lambda: torch.autograd.grad(batched_meta_loss(params, batch, steps, second_order=second_order), params)
            fastest[second_order, steps] = min(fastest[second_order, steps], seconds(run, repeats=1))
for second_order in (True, False):
    cost[second_order]["ms"] = [1000 * fastest[second_order, k] for k in step_counts]

print(f"{'inner steps':>11s} | {'second order':>22s} | {'first order':>22s} | cos(first, second)")
for i, steps in enumerate(step_counts):
    print(f"{steps:11d} | {cost[True]['ms'][i]:7.2f} ms {cost[True]['MB'][i]:8.3f} MB | "
          f"{cost[False]['ms'][i]:7.2f} ms {cost[False]['MB'][i]:8.3f} MB | {cosine_fo[i]:.4f}")
per_step = {so: (cost[so]["MB"][-1] - cost[so]["MB"][0]) / (step_counts[-1] - step_counts[0]) for so in (True, False)}
print(f"memory added per inner step: second order {1000 * per_step[True]:.0f} kB, first order {1000 * per_step[False]:.0f} kB")
if not quick_mode():  # linear growth for second order, none for first order (the counts are exact)
    added = torch.diff(torch.tensor(cost[True]["MB"]))
    assert (added - added.mean()).abs().max() < 0.01 * added.mean() and max(cost[False]["MB"]) == min(cost[False]["MB"])

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for second_order, label, colour in [(True, "second order (MAML)", METHOD_COLOURS["MAML"]), (False, "first order (FOMAML)", METHOD_COLOURS["FOMAML"])]:
    axes[0].plot(step_counts, cost[second_order]["ms"], "o-", color=colour, label=label)
    axes[1].plot(step_counts, cost[second_order]["MB"], "o-", color=colour, label=label)
axes[0].set_ylabel(f"time per meta-step (ms, fastest of {rounds})")
axes[1].set_ylabel("graph kept for the meta-backward (MB)")
axes[0].set_title("Time: both grow with the inner loop")
axes[1].set_title("Memory: only second order grows")
for ax in axes:
    ax.set_xlabel("inner steps k")
    ax.set_ylim(bottom=0)
    ax.legend()
plt.show()

# %% [markdown]
# Memory tells the story cleanly. First order keeps a constant graph, the query forward pass of the
# 25 adapted networks (0.25 MB), however long the inner loop. Second order adds the same amount,
# 287 kB, with every inner step: its memory grows **linearly with the number of inner steps**, from
# 0.38 MB at one step to 2.96 MB at ten, and it scales with the meta-batch size and with the size
# of the activations. On this MLP these are megabytes; on a convolutional network for images they
# are the gigabytes that make second-order MAML run out of memory. Time grows with $k$ for both,
# since both run $k$ forward and backward passes in the inner loop; second order adds the
# backward pass through each of them (one Hessian-vector product per step, a few gradients'
# worth), so its line is steeper. (Timings on a shared machine wobble a little even as the fastest
# of many runs; the memory counts are exact.) On this network, with $\alpha = 0.01$, the
# first-order meta-gradient points almost the same way as the second-order one for a single inner
# step (cosine 0.99), and less so as the inner loop grows (0.73 at ten steps).
#
# ## 2.8 Two classic bugs
#
# Both bugs below produce code that runs, prints decreasing losses (the inner loop still learns),
# and meta-learns nothing or something else. Both are common in tutorials.
#
# ### Bug 1: a copy and an optimiser in the inner loop
#
# It is tempting to implement the inner loop the way one trains any network: copy the model, give
# the copy an optimiser, call `backward()` and `step()`.

# %%
seed_everything(0)
model = mlp(1, 1).to(device)
before = copy.deepcopy(model.state_dict())
meta_optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
tasks = SinusoidTasks(k_shot=10, q_query=10, seed=2, device=device)

for meta_step in range(3):
    meta_optimiser.zero_grad()
    for x_support, y_support, x_query, y_query in tasks.sample(4).unbind():
        fast = copy.deepcopy(model)  # BUG: new leaf tensors, no autograd link to model's parameters
        inner_optimiser = torch.optim.SGD(fast.parameters(), lr=0.01)
        inner_optimiser.zero_grad()
        F.mse_loss(fast(x_support), y_support).backward()
        inner_optimiser.step()  # BUG: an in-place update under torch.no_grad()
        F.mse_loss(fast(x_query), y_query).backward()  # the "meta-loss" backpropagates into the copy only
    meta_optimiser.step()

print("gradients reaching the initial weights:", [p.grad for p in model.parameters()])
print("initial weights changed after 3 meta-steps:", any(not torch.equal(before[k], v) for k, v in model.state_dict().items()))
print(f"gradient left on the last copy: norm {torch.cat([p.grad.flatten() for p in fast.parameters()]).norm():.3f}")

# %% [markdown]
# Every `.grad` of the initial model is `None`, so the meta-optimiser skips all parameters and the
# "meta-trained" model is exactly the model we started with. Two things cut the graph:
# `deepcopy` makes fresh leaf tensors with no history, and `optimizer.step()` changes them in
# place under `torch.no_grad()`, so the adapted weights are not a function of $\theta$ as far as
# autograd knows. The gradient went to the copy instead: the support gradient plus the query
# gradient, summed because nobody zeroed it in between. Copying those gradients back onto the
# model would give neither MAML nor FOMAML. The fix is the functional inner loop used throughout
# this chapter: adapted weights computed as `theta - alpha * g`, a new tensor in the graph.
#
# ### Bug 2: forgetting `create_graph=True`
#
# The functional version has its own trap. Without `create_graph=True`, `torch.autograd.grad`
# returns the inner gradient as a constant; the adapted weights still depend on $\theta$, through
# the $\theta$ in $\theta - \alpha g$, so backpropagation works, but it no longer sees the Hessian
# term. Nothing fails: the result is silently the first-order gradient.

# %%
def meta_gradient_forgetful(theta, tasks, alpha=ALPHA):
    theta = theta.clone().requires_grad_(True)
    total = 0.0
    for support_x, support_y, query_x, query_y in tasks.unbind():
        (g,) = torch.autograd.grad(loss(theta, support_x, support_y), theta)  # BUG: no create_graph=True
        total = total + loss(theta - alpha * g, query_x, query_y)
    (meta_grad,) = torch.autograd.grad(total / len(tasks), theta)
    return meta_grad


forgetful = meta_gradient_forgetful(theta0, lines)
print(f"without create_graph: {forgetful.tolist()}")
print(f"  max |diff| to first-order MAML:  {(forgetful - check[1]['first order (no Hessian term)']).abs().max():.1e}")
print(f"  max |diff| to the true gradient: {(forgetful - check[1]['central finite differences']).abs().max():.1e}")

# %% [markdown]
# The forgetful gradient *is* FOMAML's, up to rounding error, and misses the true meta-gradient by
# the whole Hessian term. The same silent switch to first order happens with `.detach()`, with
# `torch.no_grad()` around the inner loop, or with updates through `p.data`. The defence is the
# test of section 2.3: compare the meta-gradient with finite differences on a small problem in
# double precision. A correct second-order implementation agrees to about $10^{-9}$; the
# forgetful one misses by the Hessian term.
#
# ## 2.9 From scratch to the library
#
# The pieces of this chapter are everything a MAML implementation needs: a functional inner loop,
# `grad` inside `grad` (or `create_graph=True`), a mean over a batch of tasks, and a switch that
# drops the Hessian term. Chapter 3 builds them into a reusable learner and meta-trains it on
# sinusoids and Omniglot; the book's package ships it as `mlhelpers.learners.MAML`, with the same
# `adapt`/`predict` interface as every learner in the book. It wraps any `nn.Module`; our line is
# an `nn.Linear(1, 1)`, whose weight is the slope and whose bias is the intercept. One check
# against this chapter's from-scratch meta-gradients at $\theta_0$:

# %%
for first_order, reference in [(False, grad(meta_loss)(theta0, lines)), (True, fomaml_direction(theta0, lines))]:
    line_model = torch.nn.Linear(1, 1).double()
    with torch.no_grad():
        line_model.weight.fill_(theta0[0])
        line_model.bias.fill_(theta0[1])
    learner = MAML(line_model, inner_lr=ALPHA, inner_steps=1, first_order=first_order)
    learner.meta_loss(lines).backward()
    library = torch.cat([line_model.weight.grad.flatten(), line_model.bias.grad.flatten()])
    print(f"MAML(first_order={first_order!s:5s}) {library.tolist()}   max |diff| to ours: {(library - reference).abs().max():.0e}")

# %% [markdown]
# > **Common mistakes**
# >
# > - *An inner loop written like ordinary training:* `copy.deepcopy(model)`, an inner optimiser,
# >   `backward()` and `step()`. The copy has fresh leaf tensors and `step()` updates them in place
# >   without recording it, so no gradient reaches $\theta$ and nothing is meta-learned (Bug 1 of
# >   Section 2.8). Compute the adapted weights functionally, $\phi = \theta - \alpha g$, as new
# >   tensors in the graph.
# > - *Forgetting `create_graph=True`* (or detaching the inner gradient). Nothing fails, and the
# >   meta-gradient is silently first order (Bug 2 of Section 2.8). Check a meta-gradient against
# >   central finite differences in double precision, as Section 2.3 does.
# > - *Ignoring the computational cost.* Second-order MAML backpropagates through every inner step,
# >   so it keeps every step's graph: memory grows linearly with the inner steps (287 kB a step on
# >   the small MLP of Section 2.7, gigabytes on convolutional networks). Budget for it, or take
# >   fewer steps, first order, or implicit gradients.
# > - *Taking first order as a free approximation.* FOMAML is close to MAML only while
# >   $\alpha\lVert H_S\rVert$ is small and the inner loop short; in the laboratory it ended at a
# >   different initialisation (Section 2.5), because the term it drops is what tells the
# >   meta-learner which directions adaptation fixes anyway.
# > - *Solving the inner problem exactly.* If the inner loop ran to the minimiser of the support
# >   loss, the adapted weights would no longer depend on where it started and $\theta$ would drop
# >   out of the objective (Section 2.1); a short inner loop is part of the method.

# %% [markdown]
# ## Exercises
#
# **Exercise 2.1 (two inner steps).** Derive the meta-gradient for two inner steps,
# $\phi_1 = \theta - \alpha\nabla\mathcal{L}^S(\theta)$, $\phi_2 = \phi_1 - \alpha\nabla\mathcal{L}^S(\phi_1)$.
# Then compute it on the sinusoid MLP with two Hessian-vector products, without autograd through
# the inner loop, and check it against autograd. Does the order of the two factors matter?
#
# **Exercise 2.2 (`maml_step` from scratch).** Write `maml_step(params, tasks, alpha, beta)` for
# sinusoid regression with `torch.func` (`functional_call`, `grad`, `vmap`): one meta-update of a
# parameter dictionary on a batch of tasks. Check its meta-gradient against central finite
# differences in double precision.
#
# **Exercise 2.3 (why second order, and when is first order enough?).** Explain in two sentences
# why MAML's gradient involves second derivatives. Then estimate, for the sinusoid MLP at
# initialisation, the quantity that decides how much FOMAML loses, $\alpha \lVert H_S \rVert$, by
# power iteration with Hessian-vector products.
#
# **Exercise 2.4 (the cost of a Hessian-vector product).** For a network with $P$ parameters, how
# many Hessian-vector products does the full Hessian take, and how much memory? Measure the time of
# one Hessian-vector product relative to one gradient on the MLP, and predict how long the full
# Hessian takes from it.
#
# **Exercise 2.5 (why two losses, and when does it matter?).** Train the laboratory's MAML with
# the query loss replaced by the support loss, $\mathcal{L}^S_i(\phi_i(\theta))$. Where does it end,
# and how does it do on the query sets of 2,000 new tasks? Why is the answer different for a
# network with thousands of parameters?
#
# ### Solutions
#
# **2.1.** Apply the one-step rule twice. The query loss depends on $\theta$ through $\phi_2$,
# which depends on $\phi_1$, which depends on $\theta$:
# $\frac{\partial\phi_2}{\partial\phi_1} = I - \alpha H_S(\phi_1)$ and
# $\frac{\partial\phi_1}{\partial\theta} = I - \alpha H_S(\theta)$, so
#
# $$
# \nabla_\theta\mathcal{L}^Q(\phi_2) = \big(I - \alpha H_S(\theta)\big)\big(I - \alpha H_S(\phi_1)\big)\,\nabla\mathcal{L}^Q(\phi_2).
# $$
#
# Evaluated from the right, that is two Hessian-vector products: first at $\phi_1$, then at
# $\theta$. In double precision, so that the comparison is sharp:

# %%
net64 = copy.deepcopy(net).double()
theta64 = torch.cat([p.detach().flatten() for p in net64.parameters()])
loss64 = lambda t, x, y: (functional_call(net64, unflatten(t), (x,)) - y).pow(2).mean()
xs64, ys64, xq64, yq64 = (t.double() for t in next(sinusoids.sample(1).unbind()))
support_loss = lambda t: loss64(t, xs64, ys64)
alpha = 0.05
hvp = lambda point, vector: jvp(grad(support_loss), (point,), (vector,))[1]

phi1 = theta64 - alpha * grad(support_loss)(theta64)
phi2 = phi1 - alpha * grad(support_loss)(phi1)
v = grad(loss64)(phi2, xq64, yq64)
w = v - alpha * hvp(phi1, v)
ours = w - alpha * hvp(theta64, w)

wrong_order = v - alpha * hvp(theta64, v)
wrong_order = wrong_order - alpha * hvp(phi1, wrong_order)

two_steps = lambda t: loss64(t - alpha * grad(support_loss)(t) - alpha * grad(support_loss)(t - alpha * grad(support_loss)(t)), xq64, yq64)
reference = grad(two_steps)(theta64)
print(f"two HVPs, right order: max |diff| to autograd {(ours - reference).abs().max():.1e}")
print(f"two HVPs, wrong order: max |diff| to autograd {(wrong_order - reference).abs().max():.1e}   (max |gradient| {reference.abs().max():.2f})")

# %% [markdown]
# The order matters as soon as the Hessian changes between the two points, as it does for any
# network; for the quadratic laboratory it would not.
#
# **2.2.** A parameter dictionary in, a parameter dictionary out. `vmap` runs the inner loop of
# every task in parallel; the outer `grad_and_value` differentiates through it.

# %%
def maml_step(params, tasks, alpha=0.01, beta=0.001, steps=1):
    """One MAML meta-update of `params` ({name: tensor} of `net`) on a batch of regression tasks."""
    def mse(p, x, y):
        return F.mse_loss(functional_call(net, p, (x,)), y)

    def task_meta_loss(p, support_x, support_y, query_x, query_y):
        for _ in range(steps):
            g = grad(mse)(p, support_x, support_y)
            p = {name: p[name] - alpha * g[name] for name in p}
        return mse(p, query_x, query_y)

    def batch_meta_loss(p):
        return vmap(task_meta_loss, in_dims=(None, 0, 0, 0, 0))(p, tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y).mean()

    meta_grad, value = torch.func.grad_and_value(batch_meta_loss)(params)
    new_params = {name: params[name] - beta * meta_grad[name] for name in params}
    return new_params, value, meta_grad, batch_meta_loss


params64 = {name: p.detach().double() for name, p in net.named_parameters()}  # double precision: a sharp check
batch64 = SinusoidTasks(k_shot=10, q_query=10, seed=3, device=device).sample(budget(full=25, quick=5))
batch64 = Task(*(t.double() for t in (batch64.support_x, batch64.support_y, batch64.query_x, batch64.query_y)))
new_params, value, meta_grad, objective = maml_step(params64, batch64)

seed_everything(0)
direction = {name: torch.randn_like(p) for name, p in params64.items()}
eps = 1e-6
shifted = lambda s: objective({name: params64[name] + s * eps * direction[name] for name in params64})
fd = (shifted(+1) - shifted(-1)) / (2 * eps)
analytic = sum((meta_grad[name] * direction[name]).sum() for name in params64)
print(f"directional derivative: meta-gradient {analytic:.10f}, finite differences {fd:.10f}, relative difference {abs(analytic - fd) / abs(fd):.1e}")
print(f"meta-loss on this batch: before the step {value:.4f}, after one step {objective(new_params):.4f}")

# %% [markdown]
# **2.3.** The outer loss is evaluated at $\phi(\theta)$, and $\phi$ contains the gradient
# $\nabla\mathcal{L}^S(\theta)$; differentiating $\phi$ with respect to $\theta$ differentiates that
# gradient again, which brings in the Hessian. FOMAML ignores it and errs by
# $\alpha H_S\nabla\mathcal{L}^Q(\phi)$ per step, which is small relative to the gradient when
# $\alpha\lVert H_S\rVert \ll 1$ (and stays small over $k$ steps when $k\,\alpha\lVert H_S\rVert \ll 1$).
# Power iteration finds the largest-magnitude eigenvalue of $H_S$ with nothing but products:

# %%
def top_eigenvalue(hvp_fn, size, iterations):
    vector = torch.randn(size, device=device)
    for _ in range(iterations):
        product = hvp_fn(vector)
        vector = product / product.norm()
    return (vector @ hvp_fn(vector)).item()


seed_everything(0)
net_f = lambda t: net_loss(t, xs, ys)
lam = top_eigenvalue(lambda vec: jvp(grad(net_f), (theta_net,), (vec,))[1], P, iterations=budget(full=100, quick=20))
exact = torch.linalg.eigvalsh(full_hessian)
print(f"power iteration: lambda = {lam:.3f}; exact extreme eigenvalues {exact.min():.3f} and {exact.max():.3f}")
print(f"alpha = 0.01: alpha * |lambda| = {0.01 * abs(lam):.3f};   alpha = 0.1: {0.1 * abs(lam):.2f}")

# %% [markdown]
# With the paper's $\alpha = 0.01$, $\alpha\lVert H_S\rVert$ is well below 1 at initialisation,
# which is why the first-order and second-order meta-gradients of section 2.7 point almost the same
# way for one inner step; over ten steps the dropped factors add up ($k\alpha\lVert H_S\rVert$
# is above 1) and the cosine there falls to about 0.7. FOMAML is good enough when $\alpha\lVert H_S\rVert$ stays small and the inner loop is short;
# Finn et al. reported almost no loss on miniImageNet. It is not when the inner step is large
# relative to the curvature: in the laboratory, $\alpha c_S \approx 0.8$ for the wide tasks, and
# FOMAML converged to a visibly different initialisation.
#
# **2.4.** The full Hessian needs one Hessian-vector product per column, $P$ of them, and
# $P^2$ numbers of memory; one product needs $O(P)$ memory and the time of a few gradients (one
# forward-mode pass over a backward pass). From the timings of section 2.6:

# %%
t_hvp, t_grad = timing["one HVP, double backward"], timing["one gradient"]
print(f"MLP: one HVP (double backward) = {t_hvp / t_grad:.1f} gradients; P = {P} of them one by one: {P * t_hvp:.2f} s; "
      f"vectorised by torch.func.hessian: {timing['full Hessian (torch.func.hessian)']:.2f} s; memory {P * P * 4 / 1e6:.1f} MB vs {P * 4 / 1e3:.1f} kB for one product")
print(f"conv4: {P_conv:,} products for the full Hessian, {P_conv**2 * 4 / 1e9:,.0f} GB to hold it; one product {P_conv * 4 / 1e6:.2f} MB")

# %% [markdown]
# `torch.func.hessian` vectorises its $P$ products, so it beats $P$ separate calls, but it cannot
# beat $P^2$ memory: for the conv4 of section 2.6 that is out of reach, while a product costs a
# few gradients. MAML needs one product per inner step per task, never the matrix.
#
# **2.5.** Swap the query loss for the support loss and train from the same start:

# %%
def support_graded_meta_loss(theta, tasks, alpha=ALPHA):
    def one_task(support_x, support_y, query_x, query_y):
        return loss(adapt(theta, support_x, support_y, alpha), support_x, support_y)
    return vmap(one_task)(tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y).mean()


new_lines = line_tasks(2000, seed=1)
theta = theta_start
for _ in range(META_STEPS):
    theta = theta - BETA * grad(support_graded_meta_loss)(theta, lines)
print(f"support-graded MAML ends at ({theta[0]:+.3f}, {theta[1]:+.3f}); query MSE after adaptation on new tasks {meta_loss(theta, new_lines):.4f}")
print(f"query-graded MAML   ends at ({paths['MAML'][-1, 0]:+.3f}, {paths['MAML'][-1, 1]:+.3f}); query MSE after adaptation on new tasks {meta_loss(paths['MAML'][-1], new_lines):.4f}")

# %% [markdown]
# In the laboratory the two objectives agree closely; the support-graded initialisation is even a
# hair better on new tasks, a difference far below anything that matters. A line has two
# parameters and cannot memorise five noisy points, so fitting the support set well and predicting
# the query set well ask for nearly the same thing. The distinction matters when the adapted model *can* memorise:
# a network with thousands of parameters can pass through five points exactly, and a meta-learner
# graded on the support set would learn initialisations (and, if it may, learning rates) that
# fit the support points, noise included, at the expense of everything between them. The query set
# is the only part of the objective that measures generalisation from the support set.
#
# ## Summary
#
# - MAML's objective $\min_\theta\mathbb{E}_i\big[\mathcal{L}^Q_i(\theta - \alpha\nabla\mathcal{L}^S_i(\theta))\big]$
#   is a **bilevel** problem: an inner loop adapts to each task's support set, an outer loop moves
#   the starting point to make adaptation succeed on the query set.
# - Its gradient is $(I - \alpha H_S)\nabla\mathcal{L}^Q(\phi)$, with one factor $I - \alpha H_S$ per
#   inner step. We checked it by hand, with `torch.autograd` and `torch.func`, and against finite
#   differences.
# - The Hessian term tells the meta-learner which directions adaptation fixes anyway. In the
#   laboratory it moved the learned initialisation from the easy tasks' side to the hard tasks'.
# - FOMAML drops the Hessian term; Reptile averages the gradients of the inner loop. Both keep, to
#   first order in $\alpha$, the loss term and a weaker version of MAML's term that aligns support
#   and query gradients, and both drift from MAML as $\alpha$ and the inner loop grow.
# - MAML needs Hessian-vector products, never the Hessian: time a small multiple of a gradient,
#   memory $O(P)$. What it does pay for is **memory that grows linearly with the inner steps**.
# - Deep copies with an inner optimiser give no meta-gradient at all; forgetting
#   `create_graph=True` silently gives the first-order one. Check against finite differences.
#
# **References.** Finn, Abbeel & Levine (2017), *Model-agnostic meta-learning for fast adaptation
# of deep networks*, ICML. Nichol, Achiam & Schulman (2018), *On first-order meta-learning
# algorithms*, arXiv:1803.02999 (Reptile, and the Taylor expansion of section 2.4). Pearlmutter
# (1994), *Fast exact multiplication by the Hessian*, Neural Computation 6(1). For further
# reading: Rajeswaran, Finn, Kakade & Levine (2019), *Meta-learning with implicit gradients*,
# NeurIPS (implicit MAML: an exact inner solution, and a meta-gradient whose memory does not grow
# with the inner steps).
