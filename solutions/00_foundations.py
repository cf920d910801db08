# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 00 Foundations: tensors, gradients and optimizers
#
# Every model in this course, from a character RNN to an aligned GPT, is trained the same way:
# compute a loss, get its gradient with respect to every parameter, and let an optimizer move
# the parameters a little. This chapter builds that machinery by hand so that nothing later is
# magic.
#
# **Learning objectives.** After this chapter you can
#
# 1. run a forward and a backward pass through a small computation graph by hand, and check it
#    against PyTorch's autograd;
# 2. write a numerically stable softmax cross-entropy and explain why the naive one overflows;
# 3. derive and implement SGD, momentum, RMSProp and Adam, including Adam's bias correction;
# 4. implement AdamW (decoupled weight decay) that matches `torch.optim.AdamW` step for step;
# 5. build a linear warm-up + cosine learning-rate schedule and clip gradients by global norm.
#
# **How to use this notebook.** Cells marked *Exercise* are graded: replace
# `raise NotImplementedError()` with your code, then run the test cell below it. The visible
# tests tell you what was expected and what came back; hidden tests run at grading time.
# Demonstrations call the course library `llmcourse`, so they work before you solve anything.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import llmcourse
from llmcourse.checks import check_close, check_equal
from llmcourse.display import glue

torch.manual_seed(0)
print("llmcourse", llmcourse.__version__, "| torch", torch.__version__)

# %% [markdown]
# ## 1. Tensors and automatic differentiation
#
# A tensor is an n-dimensional array with a `dtype` and a `device`. When a tensor has
# `requires_grad=True`, PyTorch records every operation applied to it in a *computation graph*;
# calling `.backward()` on a scalar walks that graph in reverse and accumulates
# $\partial L / \partial x$ into each leaf's `.grad`.
#
# Throughout the course we annotate shapes in comments: `# (B, T, C)` means batch, time,
# channels.

# %%
x = torch.randn(4, 3, requires_grad=True)  # (B, C) = (4, 3)
w = torch.randn(3, 2, requires_grad=True)  # (C, K) = (3, 2)
y = (x @ w).relu().sum()  # scalar
y.backward()
print("x.grad shape:", tuple(x.grad.shape), "| w.grad shape:", tuple(w.grad.shape))

# %% [markdown]
# ## 2. Backpropagation by hand
#
# Take $L = c\,(a + 2b)$. Name the intermediate values so the graph is explicit:
#
# $$ u = 2b, \qquad s = a + u, \qquad L = c \cdot s. $$
#
# The backward pass applies the chain rule from the output towards the inputs, multiplying the
# *upstream* gradient by each node's *local* gradient:
#
# $$
# \frac{\partial L}{\partial c} = s, \qquad
# \frac{\partial L}{\partial s} = c, \qquad
# \frac{\partial L}{\partial a} = \frac{\partial L}{\partial s}\cdot 1, \qquad
# \frac{\partial L}{\partial b} = \frac{\partial L}{\partial s}\cdot 1 \cdot 2 .
# $$
#
# ```text
#  b --(x2)--> u --+
#                  +--> s = a + u --> L = c * s
#  a --------------+                    ^
#  c -----------------------------------+
# ```
#
# ### Exercise 1 (worked numbers): forward and backward by hand
#
# Write `forward_backward(a, b, c)` that returns `(L, dL_da, dL_db, dL_dc)` as Python floats,
# computed with the chain rule above (no autograd). At $a=3, b=1, c=-2$ you should get
# $L=-10$, $\partial L/\partial a=-2$, $\partial L/\partial b=-4$, $\partial L/\partial c=5$.

# %% nbgrader={"grade": false, "grade_id": "forward_backward", "locked": false, "schema_version": 3, "solution": true, "task": false}
def forward_backward(a: float, b: float, c: float) -> tuple[float, float, float, float]:
    """Forward and backward pass of L = c * (a + 2b), by hand."""
    ### BEGIN SOLUTION
    u = 2.0 * b
    s = a + u
    loss = c * s
    dL_ds = c
    dL_dc = s
    dL_da = dL_ds * 1.0
    dL_du = dL_ds * 1.0
    dL_db = dL_du * 2.0
    return float(loss), float(dL_da), float(dL_db), float(dL_dc)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "forward_backward_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
result = forward_backward(3.0, 1.0, -2.0)
check_equal(len(result), 4, "number of values returned (L, dL/da, dL/db, dL/dc)")
check_close(result[0], -10.0, "L at a=3, b=1, c=-2")
check_close(result[1], -2.0, "dL/da at a=3, b=1, c=-2")
check_close(result[2], -4.0, "dL/db at a=3, b=1, c=-2", hints={"forgot the factor 2 from u = 2b": -2.0})
check_close(result[3], 5.0, "dL/dc at a=3, b=1, c=-2")
### BEGIN HIDDEN TESTS
for a_, b_, c_ in [(0.5, -1.5, 4.0), (-2.0, 3.0, 0.25), (10.0, 0.0, -1.0)]:
    ta, tb, tc = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (a_, b_, c_))
    loss_ref = tc * (ta + 2 * tb)
    loss_ref.backward()
    got = forward_backward(a_, b_, c_)
    check_close(got, [loss_ref.item(), ta.grad.item(), tb.grad.item(), tc.grad.item()],
                f"(L, dL/da, dL/db, dL/dc) at a={a_}, b={b_}, c={c_} against autograd")
### END HIDDEN TESTS

# %% [markdown]
# Autograd agrees with the hand computation. Here is the same graph in PyTorch:

# %%
a, b, c = (torch.tensor(v, requires_grad=True) for v in (3.0, 1.0, -2.0))
L = c * (a + 2 * b)
L.backward()
print(f"L = {L.item():.1f}, dL/da = {a.grad.item():.1f}, dL/db = {b.grad.item():.1f}, dL/dc = {c.grad.item():.1f}")

# %% [markdown]
# ## 3. Losses: softmax cross-entropy, stably
#
# A classifier outputs *logits* $z \in \mathbb{R}^K$. Softmax turns them into probabilities
# $p_k = e^{z_k} / \sum_j e^{z_j}$, and the cross-entropy of the true class $y$ is
#
# $$ \ell(z, y) = -\log p_y = -z_y + \log \sum_{j} e^{z_j}. $$
#
# Computed literally, $e^{z_j}$ overflows to `inf` once $z_j \gtrsim 89$ in float32. The fix is
# the *log-sum-exp* trick: with $m = \max_j z_j$,
# $\log\sum_j e^{z_j} = m + \log \sum_j e^{z_j - m}$, where every exponent is $\le 0$.
# Its gradient is also simple: $\partial \ell / \partial z = p - \text{onehot}(y)$.
#
# ### Exercise 2: stable softmax cross-entropy
#
# Write `softmax_cross_entropy(logits, targets)` for `logits` of shape `(N, K)` and integer
# `targets` of shape `(N,)`, returning the **mean** loss over the batch as a 0-dim tensor.
# Use the log-sum-exp trick over the class axis; do not call `F.cross_entropy` or
# `torch.logsumexp`.

# %% nbgrader={"grade": false, "grade_id": "softmax_cross_entropy", "locked": false, "schema_version": 3, "solution": true, "task": false}
def softmax_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of integer targets (N,) under logits (N, K), computed stably."""
    ### BEGIN SOLUTION
    m = logits.max(dim=1, keepdim=True).values  # (N, 1)
    log_norm = m.squeeze(1) + torch.log(torch.exp(logits - m).sum(dim=1))  # (N,)
    true_logit = logits.gather(1, targets.long().unsqueeze(1)).squeeze(1)  # (N,)
    return (log_norm - true_logit).mean()
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "softmax_cross_entropy_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
logits_ = torch.tensor([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
targets_ = torch.tensor([0, 1])
check_close(
    softmax_cross_entropy(logits_, targets_), F.cross_entropy(logits_, targets_),
    "mean cross-entropy of a small batch",
    hints={"softmax over the wrong axis (dim=0 instead of the class axis)":
           F.nll_loss(torch.log_softmax(logits_, dim=0), targets_),
           "summed over the batch instead of the mean": F.cross_entropy(logits_, targets_, reduction="sum")},
)
big = torch.tensor([[1000.0, 0.0, -1000.0]])
check_close(softmax_cross_entropy(big, torch.tensor([0])), 0.0,
            "loss for logits [1000, 0, -1000] with target 0 (needs the log-sum-exp trick)")
### BEGIN HIDDEN TESTS
gen = torch.Generator().manual_seed(7)
for n, k in [(5, 3), (16, 10), (1, 50)]:
    z = torch.randn(n, k, generator=gen) * 30
    t = torch.randint(0, k, (n,), generator=gen)
    check_close(softmax_cross_entropy(z, t), F.cross_entropy(z, t), f"cross-entropy for N={n}, K={k}", atol=1e-4)
z = torch.randn(4, 6, generator=gen, requires_grad=True)
t = torch.randint(0, 6, (4,), generator=gen)
softmax_cross_entropy(z, t).backward()
check_close(z.grad, (torch.softmax(z, 1) - F.one_hot(t, 6)).detach() / 4, "gradient of the mean loss")
### END HIDDEN TESTS

# %% [markdown]
# ## 4. A multi-layer perceptron, trained
#
# A two-layer MLP $f(x) = W_2\,\sigma(W_1 x + b_1) + b_2$ is a universal function
# approximator: with enough hidden units it can carve any decision boundary. Below it learns two
# interleaved spirals, with the course library's Adam. The *loss curve* is the first thing to
# look at in any training run: it should fall fast, then flatten; a NaN means something broke.

# %% tags=["demo"] mystnb={"image": {"alt": "Left: training loss of the MLP falling from about 0.7 to near 0 over 300 steps. Right: the two spirals with the learned decision regions."}}
from llmcourse.optim import Adam


def make_spirals(n: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaved spirals: points (2n, 2) and labels (2n,)."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.sqrt(torch.rand(n, generator=gen)) * 3 * math.pi  # (n,)
    arm = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) / (3 * math.pi)  # (n, 2)
    points = torch.cat([arm, -arm]) + noise * torch.randn(2 * n, 2, generator=gen)
    labels = torch.cat([torch.zeros(n), torch.ones(n)]).long()
    return points, labels


points, labels = make_spirals(400, 0.03, seed=0)
mlp = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64),
                          torch.nn.Tanh(), torch.nn.Linear(64, 2))
opt = Adam(mlp.parameters(), lr=1e-2)
losses = []
for step in range(300):
    loss = F.cross_entropy(mlp(points), labels)
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
    if not math.isfinite(losses[-1]):
        raise FloatingPointError(f"loss became {losses[-1]} at step {step}")
accuracy = (mlp(points).argmax(1) == labels).float().mean().item()
glue("mlp_accuracy", f"{accuracy:.1%}")
glue("mlp_final_loss", f"{losses[-1]:.3f}")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
ax1.plot(losses)
ax1.set(xlabel="step", ylabel="cross-entropy", title="training loss", yscale="log")
grid = torch.stack(torch.meshgrid(torch.linspace(-1.2, 1.2, 200), torch.linspace(-1.2, 1.2, 200), indexing="xy"), -1)
with torch.no_grad():
    region = mlp(grid.reshape(-1, 2)).argmax(1).reshape(200, 200)
ax2.contourf(grid[..., 0], grid[..., 1], region, alpha=0.25, cmap="coolwarm")
ax2.scatter(points[:, 0], points[:, 1], c=labels, s=4, cmap="coolwarm")
ax2.set(title=f"decision regions (accuracy {accuracy:.1%})", aspect="equal")
plt.tight_layout()
plt.show()

# %% [markdown]
# After 300 Adam steps the network classifies {glue:text}`mlp_accuracy` of the training points
# (final loss {glue:text}`mlp_final_loss`).
#
# ## 5. Optimizers, written out
#
# Let $g_t = \nabla_\theta L(\theta_{t-1})$ and learning rate $\eta$.
#
# | method | update |
# |---|---|
# | SGD | $\theta_t = \theta_{t-1} - \eta\, g_t$ |
# | momentum | $v_t = \mu v_{t-1} + g_t,\quad \theta_t = \theta_{t-1} - \eta\, v_t$ |
# | RMSProp | $s_t = \rho s_{t-1} + (1-\rho) g_t^2,\quad \theta_t = \theta_{t-1} - \eta\, g_t / (\sqrt{s_t} + \epsilon)$ |
# | Adam | $m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\ v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2$ |
# |  | $\hat m_t = m_t / (1-\beta_1^t),\ \hat v_t = v_t / (1-\beta_2^t),\ \theta_t = \theta_{t-1} - \eta\, \hat m_t / (\sqrt{\hat v_t} + \epsilon)$ |
#
# **Why bias correction?** $m_0 = v_0 = 0$, so early averages are pulled towards zero: after one
# step $m_1 = (1-\beta_1) g_1 = 0.1\,g_1$. Dividing by $1-\beta_1^t$ undoes exactly that
# shrinkage (for a constant gradient, $\hat m_t = g$ for every $t$). Without it, the first
# steps of Adam are far too small for $m$ and, worse, $\sqrt{v}$ is shrunk even more
# ($1-\beta_2 = 0.001$), which makes the first steps *too large*.
#
# **Memory.** Adam stores two extra numbers per parameter ($m$ and $v$), so its optimizer
# state is twice the model's size: a 7-billion-parameter model in float32 carries 56 GB of Adam
# state. That cost is why memory-lean optimizers such as Adafactor exist.
#
# The figure compares the four on an ill-conditioned quadratic bowl
# $L(x, y) = \tfrac12(x^2 + 25 y^2)$: plain SGD zig-zags across the steep direction,
# momentum and the adaptive methods get to the minimum much faster.

# %% tags=["demo"] mystnb={"image": {"alt": "Trajectories of SGD, momentum, RMSProp and Adam on an elongated quadratic bowl; SGD zig-zags, the others head more directly to the minimum at the origin."}}
from llmcourse.optim import SGD, RMSProp


def trajectory(make_optimizer, steps: int = 60) -> np.ndarray:
    """Positions (steps + 1, 2) of an optimizer on L = (x^2 + 25 y^2) / 2 from (-4, 1.5)."""
    p = torch.tensor([-4.0, 1.5], requires_grad=True)
    optimizer = make_optimizer([p])
    path = [p.detach().clone()]
    for _ in range(steps):
        loss = 0.5 * (p[0] ** 2 + 25 * p[1] ** 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        path.append(p.detach().clone())
    return torch.stack(path).numpy()


runs = {
    "SGD (lr 0.07)": lambda ps: SGD(ps, lr=0.07),
    "momentum (lr 0.02, mu 0.9)": lambda ps: SGD(ps, lr=0.02, momentum=0.9),
    "RMSProp (lr 0.1)": lambda ps: RMSProp(ps, lr=0.1),
    "Adam (lr 0.3)": lambda ps: Adam(ps, lr=0.3),
}
xs, ys = np.meshgrid(np.linspace(-4.5, 4.5, 200), np.linspace(-2, 2, 200))
fig, ax = plt.subplots(figsize=(8, 3.8))
ax.contour(xs, ys, 0.5 * (xs**2 + 25 * ys**2), levels=20, colors="lightgray")
for name, make in runs.items():
    path = trajectory(make)
    ax.plot(path[:, 0], path[:, 1], marker=".", markersize=3, label=f"{name}: final L={0.5 * (path[-1, 0]**2 + 25 * path[-1, 1]**2):.1e}")
ax.plot(0, 0, "k*", markersize=12)
ax.set(xlabel="x", ylabel="y", title="60 steps on L = (x^2 + 25 y^2) / 2")
ax.legend(fontsize=8, loc="lower right")
plt.show()

# %% [markdown]
# ### Exercise 3 (worked numbers): three Adam steps by hand
#
# Write `adam_steps(theta, grads, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)` for a single
# scalar parameter: starting from `theta`, apply one Adam update per gradient in `grads` and
# return the list of parameter values after each step. With $\theta_0 = 1$ and gradients
# $0.5, 0.25, -0.1$ the answer is approximately `[0.999000, 0.998068, 0.997471]`.
#
# Work the first step on paper first: $m_1 = 0.05$, $v_1 = 0.00025$, $\hat m_1 = 0.5$,
# $\hat v_1 = 0.25$, so the step is $10^{-3} \cdot 0.5/0.5 = 10^{-3}$.

# %% nbgrader={"grade": false, "grade_id": "adam_steps", "locked": false, "schema_version": 3, "solution": true, "task": false}
def adam_steps(theta: float, grads: list[float], lr: float = 1e-3, beta1: float = 0.9,
               beta2: float = 0.999, eps: float = 1e-8) -> list[float]:
    """Parameter values after each Adam step on a scalar, one step per gradient."""
    ### BEGIN SOLUTION
    m = v = 0.0
    values = []
    for t, g in enumerate(grads, start=1):
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1**t)
        v_hat = v / (1 - beta2**t)
        theta = theta - lr * m_hat / (math.sqrt(v_hat) + eps)
        values.append(theta)
    return values
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "adam_steps_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def _adam_without_bias_correction(theta, grads, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    m = v = 0.0
    out = []
    for g in grads:
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        theta -= lr * m / (math.sqrt(v) + eps)
        out.append(theta)
    return out


check_close(
    adam_steps(1.0, [0.5, 0.25, -0.1]), [0.999000, 0.998068, 0.997471],
    "theta after each of 3 Adam steps", atol=2e-6, rtol=0,
    hints={"Adam without bias correction": _adam_without_bias_correction(1.0, [0.5, 0.25, -0.1])},
)
### BEGIN HIDDEN TESTS
p = torch.nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
reference = torch.optim.Adam([p], lr=0.01, betas=(0.8, 0.99), eps=1e-6)
gs = [0.3, -1.2, 0.05, 2.0, -0.7]
expected_path = []
for g in gs:
    p.grad = torch.tensor([g], dtype=torch.float64)
    reference.step()
    expected_path.append(p.item())
check_close(adam_steps(2.0, gs, lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6), expected_path,
            "Adam path against torch.optim.Adam (lr=0.01, betas=(0.8, 0.99), eps=1e-6)", atol=1e-9, rtol=1e-9)
### END HIDDEN TESTS

# %% [markdown]
# ## 6. AdamW: weight decay, decoupled
#
# *L2 regularisation* adds $\tfrac{\lambda}{2}\lVert\theta\rVert^2$ to the loss, i.e. $\lambda\theta$
# to the gradient. Inside Adam that term is divided by $\sqrt{\hat v}$ like everything else, so
# parameters with large gradients are barely regularised. Loshchilov and Hutter's **AdamW**
# {cite}`loshchilov2019adamw` *decouples* the decay from the adaptive step:
#
# $$ \theta_t = \theta_{t-1} - \eta\,\lambda\,\theta_{t-1} - \eta\,\frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}. $$
#
# PyTorch applies the decay first (`p.mul_(1 - lr * weight_decay)`), then the Adam step. It is
# the default optimizer for training transformers.
#
# ### Exercise 4: an AdamW optimizer
#
# Complete `MyAdamW.step`. Keep per-parameter state in `self.state[p]` (`step`, `exp_avg`,
# `exp_avg_sq`), skip parameters whose `.grad` is `None`, and match `torch.optim.AdamW`
# (same defaults) to within `1e-6` over many steps.

# %% nbgrader={"grade": false, "grade_id": "adamw", "locked": false, "schema_version": 3, "solution": true, "task": false}
class MyAdamW(torch.optim.Optimizer):
    """AdamW with decoupled weight decay, as in torch.optim.AdamW."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        ### BEGIN SOLUTION
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                state["exp_avg"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                m_hat = state["exp_avg"] / (1 - beta1**t)
                v_hat = state["exp_avg_sq"] / (1 - beta2**t)
                p.sub_(group["lr"] * m_hat / (v_hat.sqrt() + group["eps"]))
        ### END SOLUTION
        return loss


# %% nbgrader={"grade": true, "grade_id": "adamw_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def _compare_with_torch(steps: int, **hyper) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    net_a = torch.nn.Linear(5, 3)
    net_b = torch.nn.Linear(5, 3)
    net_b.load_state_dict(net_a.state_dict())
    mine, ref = MyAdamW(net_a.parameters(), **hyper), torch.optim.AdamW(net_b.parameters(), **hyper)
    data = torch.randn(steps, 8, 5)
    for x_batch in data:
        for net, opt_ in ((net_a, mine), (net_b, ref)):
            opt_.zero_grad()
            net(x_batch).pow(2).mean().backward()
            opt_.step()
    return net_a.weight.detach(), net_b.weight.detach()


got_w, want_w = _compare_with_torch(5, lr=0.01, weight_decay=0.1)
check_close(got_w, want_w, "weights after 5 MyAdamW steps vs torch.optim.AdamW", atol=1e-6, rtol=1e-5)
### BEGIN HIDDEN TESTS
got_w, want_w = _compare_with_torch(100, lr=3e-3, betas=(0.85, 0.98), eps=1e-7, weight_decay=0.3)
check_close(got_w, want_w, "weights after 100 steps with non-default hyper-parameters", atol=1e-6, rtol=1e-5)
q = torch.nn.Parameter(torch.ones(3))
frozen = torch.nn.Parameter(torch.ones(3))
o = MyAdamW([q, frozen], lr=0.1)
q.grad = torch.ones(3)
o.step()
check_close(frozen.detach(), torch.ones(3), "a parameter with grad None must not change (not even by decay)")
### END HIDDEN TESTS

# %% [markdown]
# ## 7. Learning-rate schedules and gradient clipping
#
# Large models are trained with a **linear warm-up** followed by a **cosine decay**. During
# warm-up Adam's second-moment estimates are still noisy, so a full-size step can throw the
# model into a bad region; ramping the rate up over the first $T_w$ steps avoids that. Then
#
# $$
# \eta(t) = \begin{cases}
#   \eta_{\max}\,\dfrac{t+1}{T_w} & t < T_w \\[2mm]
#   \eta_{\min} + \tfrac12(\eta_{\max}-\eta_{\min})\Bigl(1 + \cos\bigl(\pi\,\tfrac{t - T_w}{T - T_w}\bigr)\Bigr) & T_w \le t \le T \\[2mm]
#   \eta_{\min} & t > T
# \end{cases}
# $$
#
# where $T$ is the total number of steps: the rate rises linearly to $\eta_{\max}$, then
# follows half a cosine down to $\eta_{\min}$.
#
# ### Exercise 5: warm-up + cosine schedule
#
# Implement `warmup_cosine(step, max_lr, min_lr, warmup_steps, total_steps)` exactly as in the
# formula (steps count from 0).

# %% nbgrader={"grade": false, "grade_id": "warmup_cosine", "locked": false, "schema_version": 3, "solution": true, "task": false}
def warmup_cosine(step: int, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate at ``step``: linear warm-up to max_lr, cosine decay to min_lr at total_steps."""
    ### BEGIN SOLUTION
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step > total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "warmup_cosine_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
schedule = [warmup_cosine(s, 1.0, 0.1, 10, 110) for s in range(0, 130)]
check_close(schedule[0], 0.1, "lr at step 0 (warm-up starts at max_lr / warmup_steps)")
check_close(schedule[9], 1.0, "lr at the last warm-up step")
check_close(schedule[60], 0.55, "lr half-way through the decay (midpoint of max and min)",
            hints={"decays to 0 instead of min_lr": 0.5})
check_close(schedule[110], 0.1, "lr at total_steps (should have reached min_lr)")
### BEGIN HIDDEN TESTS
check_close(schedule[125], 0.1, "lr after total_steps stays at min_lr")
check_close(warmup_cosine(35, 3e-4, 3e-5, 20, 220), 3e-5 + 0.5 * 2.7e-4 * (1 + math.cos(math.pi * 15 / 200)),
            "lr at step 35 of a 220-step schedule with 20 warm-up steps", atol=1e-10)
check_close(np.diff(schedule[10:111]) <= 1e-12, np.ones(100), "the decay phase must never increase the lr")
### END HIDDEN TESTS

# %% [markdown]
# The library's version, `llmcourse.optim.lr_at`, is what the course's trainer uses; both
# curves overlap:

# %% tags=["demo"] mystnb={"image": {"alt": "Learning rate against step: a linear ramp over 10 steps to 1.0, then a half-cosine down to 0.1 at step 110, flat after."}}
from llmcourse.optim import lr_at

steps = np.arange(130)
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(steps, [lr_at(int(s), max_lr=1.0, min_lr=0.1, warmup_steps=10, decay_steps=110) for s in steps], lw=3, label="llmcourse.optim.lr_at")
ax.plot(steps, [warmup_cosine(int(s), 1.0, 0.1, 10, 110) for s in steps], "--", label="your warmup_cosine")
ax.set(xlabel="step", ylabel="learning rate", title="linear warm-up + cosine decay")
ax.legend()
plt.show()

# %% [markdown]
# **Gradient clipping.** One bad batch can produce a huge gradient and undo hours of training.
# *Global-norm clipping* rescales all gradients together when their joint norm
# $\lVert g\rVert = \sqrt{\sum_i \lVert g_i\rVert^2}$ exceeds a threshold $c$:
# $g_i \leftarrow g_i \cdot \min\bigl(1, c / (\lVert g\rVert + 10^{-6})\bigr)$. It keeps the
# gradient's *direction* and only limits the step size. (Clipping each parameter separately
# would change the direction.)
#
# ### Exercise 6: clip by global norm
#
# Implement `clip_global_norm(params, max_norm)`: rescale the `.grad` of every parameter in
# place, as `torch.nn.utils.clip_grad_norm_` does, and return the total norm **before**
# clipping as a float. Skip parameters without a gradient.

# %% nbgrader={"grade": false, "grade_id": "clip_global_norm", "locked": false, "schema_version": 3, "solution": true, "task": false}
def clip_global_norm(params, max_norm: float) -> float:
    """Scale gradients in place so their global L2 norm is at most ``max_norm``."""
    ### BEGIN SOLUTION
    grads = [p.grad for p in params if p.grad is not None]
    total = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
    scale = min(1.0, max_norm / (total + 1e-6))
    for g in grads:
        g.mul_(scale)
    return total
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "clip_global_norm_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
p1, p2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
p1.grad, p2.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
norm_before = clip_global_norm([p1, p2], max_norm=1.0)
check_close(norm_before, 5.0, "returned norm before clipping of gradients [3, 0] and [4]")
check_close(torch.cat([p1.grad, p2.grad]), torch.tensor([0.6, 0.0, 0.8]), "gradients after clipping to norm 1",
            atol=1e-5, hints={"clipped each parameter separately": torch.tensor([1.0, 0.0, 1.0])})
### BEGIN HIDDEN TESTS
torch.manual_seed(3)
ps_a = [torch.nn.Parameter(torch.randn(4, 4)) for _ in range(3)]
ps_b = [torch.nn.Parameter(p.detach().clone()) for p in ps_a]
for pa, pb in zip(ps_a, ps_b, strict=True):
    pa.grad = torch.randn_like(pa) * 5
    pb.grad = pa.grad.clone()
mine_norm = clip_global_norm(ps_a, 2.0)
ref_norm = torch.nn.utils.clip_grad_norm_(ps_b, 2.0)
check_close(mine_norm, ref_norm, "total norm against torch.nn.utils.clip_grad_norm_")
check_close(torch.cat([p.grad.flatten() for p in ps_a]), torch.cat([p.grad.flatten() for p in ps_b]),
            "clipped gradients against torch.nn.utils.clip_grad_norm_", atol=1e-5)
small = torch.nn.Parameter(torch.zeros(2))
small.grad = torch.tensor([0.1, 0.1])
clip_global_norm([small], 1.0)
check_close(small.grad, torch.tensor([0.1, 0.1]), "gradients below the threshold must not change", atol=1e-6)
### END HIDDEN TESTS

# %% [markdown]
# ```{admonition} Common misconceptions
# :class: warning
#
# - **"Adam is a low-memory optimizer."** It is the opposite: Adam keeps two running moments per
#   parameter, so its state is twice the size of the model (plus the gradients). Optimizers
#   such as Adafactor and 8-bit Adam exist precisely to cut that memory.
# - **"Exponential warm-up $\eta_t = e^{t/T_w}$."** As written this has no peak rate and ends at
#   $e$, whatever $\eta_{\max}$ is. Warm-up is almost always *linear* from (near) zero to
#   $\eta_{\max}$ and then *decays* (cosine or linear); a "cosine warm-up" that decreases is a
#   decay, not a warm-up.
# - **"Bias correction is a small detail."** With $\beta_2 = 0.999$ the uncorrected $v_t$ is about
#   1000 times too small at the first step, so the first updates are far from what the formula
#   intends. Exercise 3's test recognises this mistake.
# - **"Weight decay and L2 regularisation are the same."** For SGD they coincide (up to a
#   rescaling of $\lambda$); for Adam they do not, which is the whole point of AdamW.
# - **"Clipping fixes exploding gradients at the source."** It only bounds the step; the cause
#   (for RNNs, repeated multiplication by the same Jacobian; see chapter 02) is still there.
# ```
#
# ## Summary
#
# You wrote the forward and backward pass of a graph by hand, a stable cross-entropy, Adam with
# bias correction, AdamW, a warm-up + cosine schedule and global-norm clipping. The library's
# versions (`llmcourse.optim.SGD`, `RMSProp`, `Adam`, `AdamW`, `lr_at`, `clip_grad_norm`) are
# tested against `torch.optim` and are what every later chapter trains with.
#
# ## References
#
# {cite}`kingma2015adam` (Adam), {cite}`loshchilov2019adamw` (AdamW),
# {cite}`loshchilov2017sgdr` (cosine schedules), {cite}`pascanu2013difficulty` (clipping and
# exploding gradients), {cite}`goodfellow2016deep` (chapters 6 and 8). Full entries are on the
# [bibliography](../book/bibliography.md) page.
