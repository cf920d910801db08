# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 Recurrent networks: the Elman RNN and backpropagation through time
#
# Text is a sequence of unknown length. The n-gram model of chapter 01 looks at a fixed window
# of the last few tokens and forgets everything before it. A *recurrent* network instead reads
# the sequence one element at a time and carries a fixed-size vector, the *hidden state*,
# from each step to the next. The state is a learned summary of everything read so far, and
# the same weights are applied at every step, so one small network handles sequences of any
# length.
#
# Training such a network means differentiating through the chain of steps, and that chain is
# where the trouble starts: gradients that travel back many steps are multiplied by the same
# matrix again and again, so they shrink or blow up exponentially. This chapter builds the
# recurrent cell, its backward pass, measures the vanishing and exploding gradients, and ends
# with a character-level language model trained on Shakespeare.
#
# **Learning objectives.** After this chapter you can
#
# 1. write the Elman RNN cell and unroll it over a sequence, matching `torch.nn.RNNCell` and
#    `torch.nn.RNN` with the same weights;
# 2. derive backpropagation through time (BPTT) and compute $\partial L/\partial W_{hh}$ by hand,
#    checked against autograd;
# 3. explain with the eigenvalues and singular values of $W_{hh}$ why gradients vanish or
#    explode, and measure it;
# 4. stabilise training with global-norm gradient clipping and make long sequences affordable
#    with truncated BPTT;
# 5. train a character-level RNN language model and sample from it at different temperatures.
#
# **How to use this notebook.** Cells marked *Exercise* are graded: replace
# `raise NotImplementedError()` with your code, then run the test cell below it. The visible
# tests tell you what was expected and what came back; hidden tests run at grading time.
# Demonstrations call the course library `llmcourse`, so they work before you solve anything.

# %%
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import llmcourse
from llmcourse.checks import check_close, check_equal, check_raises, check_shape
from llmcourse.display import glue
from llmcourse.recurrent import RNN, RNNCell, detach_state

# Tiny recurrent models do many small matrix products one after the other; on a laptop CPU a
# single thread avoids the cost of handing each small product to several threads.
torch.set_num_threads(1)
torch.manual_seed(0)
print("llmcourse", llmcourse.__version__, "| torch", torch.__version__)

# %% [markdown]
# ## 1. The Elman cell
#
# An Elman network {cite}`elman1990finding` keeps a hidden state $h_t \in \mathbb{R}^H$. At
# step $t$ it reads the input $x_t \in \mathbb{R}^I$ and updates the state with one affine map
# and a squashing nonlinearity:
#
# $$ h_t = \tanh\bigl(W_{ih}\,x_t + b_{ih} + W_{hh}\,h_{t-1} + b_{hh}\bigr), \qquad
#    y_t = W_{hy}\,h_t + b_y . $$
#
# $W_{ih}$ has shape $(H, I)$, $W_{hh}$ has shape $(H, H)$, and $y_t$ is whatever the task
# reads off the state (for a language model: one logit per vocabulary entry). The initial
# state $h_0$ is usually zero. PyTorch keeps two biases, $b_{ih}$ and $b_{hh}$, although only
# their sum matters; we keep both so that weights can be copied to and from `torch.nn.RNN`.
#
# Drawn *unrolled* in time, the network is a deep feed-forward net with one layer per step,
# in which every layer shares the same weights:
#
# ```text
#          y_1              y_2              y_3
#           ^                ^                ^
#           | W_hy           | W_hy           | W_hy
#  h_0 --> [h_1] --W_hh--> [h_2] --W_hh--> [h_3] --> ...
#           ^                ^                ^
#           | W_ih           | W_ih           | W_ih
#          x_1              x_2              x_3
# ```
#
# Weight sharing is what makes the model length-independent: a sequence of 10 or 10,000 steps
# uses the same $H^2 + HI + 2H$ recurrent parameters. It is also what makes the gradient
# interesting, because $W_{hh}$ appears in every layer of the unrolled graph.
#
# In code we process a *batch* of $B$ sequences at once, with one row per sequence, so the
# matrices act from the right: `x` has shape `(B, I)`, `h` has shape `(B, H)`, and
# $x_t W_{ih}^\top$ has shape `(B, H)`.
#
# ### Exercise 1: the RNN cell
#
# Write `rnn_cell_forward(x, h, w_ih, w_hh, b_ih, b_hh)` returning the next state
# $h_t$ of shape `(B, H)` for inputs `x` `(B, I)` and previous state `h` `(B, H)`, with weights in
# PyTorch's layout (`w_ih` `(H, I)`, `w_hh` `(H, H)`, biases `(H,)`). The test compares it with
# `torch.nn.RNNCell` holding the same weights.


# %% nbgrader={"grade": false, "grade_id": "rnn_cell_forward", "locked": false, "schema_version": 3, "solution": true, "task": false}
def rnn_cell_forward(
    x: torch.Tensor,
    h: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: torch.Tensor,
    b_hh: torch.Tensor,
) -> torch.Tensor:
    """One Elman step: x (B, I), h (B, H) -> h_next (B, H) = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh)."""
    ### BEGIN SOLUTION
    return torch.tanh(x @ w_ih.T + b_ih + h @ w_hh.T + b_hh)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "rnn_cell_forward_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
torch.manual_seed(1)
ref_cell_ = torch.nn.RNNCell(4, 5)
w_ = {name: p.detach() for name, p in ref_cell_.named_parameters()}
x_, h_ = torch.randn(3, 4), torch.randn(3, 5)
got_ = rnn_cell_forward(x_, h_, w_["weight_ih"], w_["weight_hh"], w_["bias_ih"], w_["bias_hh"])
check_shape(got_, (3, 5), "h_t for a batch of 3 (input size 4, hidden size 5)")
pre_ = x_ @ w_["weight_ih"].T + w_["bias_ih"] + w_["bias_hh"]
check_close(
    got_,
    ref_cell_(x_, h_).detach(),
    "h_t against torch.nn.RNNCell with the same weights",
    hints={
        "forgot the tanh": pre_ + h_ @ w_["weight_hh"].T,
        "used W_hh without transposing it (h @ W_hh)": torch.tanh(pre_ + h_ @ w_["weight_hh"]),
        "left out the recurrent term h W_hh^T": torch.tanh(pre_),
        "left out the bias b_hh": torch.tanh(pre_ - w_["bias_hh"] + h_ @ w_["weight_hh"].T),
    },
)
### BEGIN HIDDEN TESTS
for batch_, in_, hid_ in [(1, 7, 3), (6, 2, 9)]:
    lib_cell_ = RNNCell(in_, hid_).double()
    xs_ = torch.randn(batch_, in_, dtype=torch.float64)
    hs_ = torch.randn(batch_, hid_, dtype=torch.float64)
    params_ = [p.detach().clone().requires_grad_() for p in lib_cell_.parameters()]
    out_ = rnn_cell_forward(xs_, hs_, *params_)
    check_close(
        out_,
        lib_cell_(xs_, hs_).detach(),
        f"h_t in float64 against llmcourse.recurrent.RNNCell (B={batch_}, I={in_}, H={hid_})",
        atol=1e-12,
        rtol=1e-12,
    )
    out_.pow(2).sum().backward()
    lib_cell_(xs_, hs_).pow(2).sum().backward()
    for mine_, (pname_, ref_p_) in zip(params_, lib_cell_.named_parameters(), strict=True):
        check_close(
            mine_.grad, ref_p_.grad, f"autograd gradient of {pname_} through your cell", atol=1e-10
        )
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 2 (worked numbers): unroll over a sequence
#
# Write `rnn_forward(xs, h0, w_ih, w_hh, b_ih, b_hh)` for a batch of sequences `xs` of shape
# `(B, T, I)` (batch first, as `torch.nn.RNN(batch_first=True)`). Return
# `(hs, h_last)`: the states $h_1, \dots, h_T$ stacked into `(B, T, H)` and the final state
# $h_T$ `(B, H)`. `h0=None` means a zero initial state. You may call `rnn_cell_forward`.
#
# Do the smallest case by hand first: a one-dimensional RNN $h_t = \tanh(w\,h_{t-1} + u\,x_t)$
# with $w = 0.5$, $u = 1$, no biases, $h_0 = 0$ and inputs $x = (1, 0.5, -1)$:
#
# $$ h_1 = \tanh(0.5 \cdot 0 + 1) = 0.761594, \qquad
#    h_2 = \tanh(0.5 \cdot 0.761594 + 0.5) = \tanh(0.880797) = 0.706818, $$
#
# and $h_3 = \tanh(0.5 \cdot 0.706818 - 1) = -0.569370$. The visible test feeds exactly these
# numbers to your function.


# %% nbgrader={"grade": false, "grade_id": "rnn_forward", "locked": false, "schema_version": 3, "solution": true, "task": false}
def rnn_forward(
    xs: torch.Tensor,
    h0: torch.Tensor | None,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: torch.Tensor,
    b_hh: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the Elman cell over xs (B, T, I) from h0 (B, H) or zeros -> (hs (B, T, H), h_T (B, H))."""
    ### BEGIN SOLUTION
    batch, steps, _ = xs.shape
    h = xs.new_zeros(batch, w_hh.shape[0]) if h0 is None else h0
    states = []
    for t in range(steps):
        h = rnn_cell_forward(xs[:, t], h, w_ih, w_hh, b_ih, b_hh)
        states.append(h)
    return torch.stack(states, dim=1), h
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "rnn_forward_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
one_ = torch.ones(1, 1)
zero_ = torch.zeros(1)
hs_, h_last_ = rnn_forward(
    torch.tensor([[[1.0], [0.5], [-1.0]]]), torch.zeros(1, 1), one_, 0.5 * one_, zero_, zero_
)
check_shape(hs_, (1, 3, 1), "hs for B=1, T=3, H=1")
check_close(
    hs_.flatten(),
    [0.761594, 0.706818, -0.569370],
    "h_1, h_2, h_3 of the worked example (w=0.5, u=1, x=(1, 0.5, -1))",
    atol=1e-6,
    hints={
        "off by one: returned h_0, h_1, h_2 instead of h_1, h_2, h_3": [0.0, 0.761594, 0.706818],
        "used the input x_t but not the previous state": [0.761594, 0.462117, -0.761594],
    },
)
check_close(h_last_.flatten(), [-0.569370], "h_last (should equal h_3)", atol=1e-6)
### BEGIN HIDDEN TESTS
for batch_, steps_, in_, hid_, with_h0_ in [
    (2, 5, 3, 4, True),
    (3, 1, 2, 6, False),
    (1, 9, 4, 2, True),
]:
    ref_rnn_ = torch.nn.RNN(in_, hid_, batch_first=True).double()
    xs_ = torch.randn(batch_, steps_, in_, dtype=torch.float64)
    h0_ = torch.randn(batch_, hid_, dtype=torch.float64) if with_h0_ else None
    want_out_, want_h_ = ref_rnn_(xs_, None if h0_ is None else h0_.unsqueeze(0))
    p_ = dict(ref_rnn_.named_parameters())
    got_out_, got_h_ = rnn_forward(
        xs_,
        h0_,
        *(p_[k].detach() for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")),
    )
    what_ = f"B={batch_}, T={steps_}, I={in_}, H={hid_}, h0 {'given' if with_h0_ else 'None'}"
    check_shape(got_out_, (batch_, steps_, hid_), f"hs ({what_})")
    check_close(got_out_, want_out_.detach(), f"hs against torch.nn.RNN ({what_})", atol=1e-10)
    check_close(got_h_, want_h_[0].detach(), f"h_last against torch.nn.RNN ({what_})", atol=1e-10)
### END HIDDEN TESTS

# %% [markdown]
# The library's layer `llmcourse.recurrent.RNN` does the same, with two speed-ups: it computes
# the input projections $x_t W_{ih}^\top$ of all steps in one matrix product before the time
# loop (they do not depend on the state), and it supports several layers and both directions.
# Only the $h_{t-1} W_{hh}^\top$ part is inherently sequential.
#
# ## 2. Backpropagation through time
#
# Backpropagation through time {cite}`werbos1990bptt,rumelhart1986learning` is ordinary
# backpropagation on the unrolled graph. Write the pre-activation
# $a_t = W_{ih} x_t + W_{hh} h_{t-1} + b$ (one bias $b = b_{ih} + b_{hh}$ suffices) and
# $h_t = \tanh(a_t)$, and let the loss be a sum of per-step terms, $L = \sum_t \ell_t(h_t)$.
# Two kinds of gradient reach $h_t$:
#
# - the *direct* one, $g_t = \partial \ell_t / \partial h_t$, from the loss at step $t$;
# - the one coming back from step $t+1$, because $h_t$ feeds $a_{t+1}$.
#
# Call the total $\delta_t = \partial L / \partial h_t$. Since $\tanh'(a) = 1 - \tanh(a)^2$,
# the gradient at the pre-activation is $r_t = \partial L/\partial a_t = \delta_t \odot (1 - h_t^2)$, and
#
# $$ \delta_T = g_T, \qquad \delta_{t-1} = g_{t-1} + W_{hh}^\top r_t \quad (t = T, \dots, 1;\ g_0 = 0). $$
#
# Each weight is used at every step, so its gradient is a *sum over time* of the local terms:
#
# $$ \frac{\partial L}{\partial W_{hh}} = \sum_{t=1}^{T} r_t\, h_{t-1}^\top, \qquad
#    \frac{\partial L}{\partial W_{ih}} = \sum_{t=1}^{T} r_t\, x_t^\top, \qquad
#    \frac{\partial L}{\partial b} = \sum_{t=1}^{T} r_t . $$
#
# Note the index in the first sum: $W_{hh}$ multiplies the **previous** state $h_{t-1}$ inside
# $a_t$, so $r_t$ pairs with $h_{t-1}$. Pairing it with $h_t$ is the classic off-by-one bug of
# hand-written BPTT, and it gives a gradient that looks plausible and is wrong.
#
# ### Exercise 3 (worked numbers): BPTT by hand
#
# Continue the one-dimensional example of Exercise 2 with the loss $L = h_3$ (so
# $g_1 = g_2 = 0$, $g_3 = 1$). Going backwards:
#
# | $t$ | $h_t$ | $1-h_t^2$ | $\delta_t$ | $r_t$ | $r_t\,h_{t-1}$ |
# |---|---|---|---|---|---|
# | 3 | $-0.569370$ | $0.675817$ | $1$ | $0.675817$ | $0.477680$ |
# | 2 | $0.706818$ | $0.500408$ | $0.5 \cdot 0.675817 = 0.337909$ | $0.169092$ | $0.128780$ |
# | 1 | $0.761594$ | $0.419974$ | $0.084546$ | $0.035507$ | $0$ (since $h_0 = 0$) |
#
# so $\partial L/\partial w = 0.477680 + 0.128780 + 0 = 0.606460$, and
# $\partial L/\partial h_0 = w\,r_1 = 0.017754$.
#
# Write `bptt(xs, h0, w_ih, w_hh, b, grad_hs)` for one sequence (no batch axis): `xs` `(T, I)`,
# `h0` `(H,)`, `w_ih` `(H, I)`, `w_hh` `(H, H)`, `b` `(H,)`, and `grad_hs` `(T, H)` whose row
# $t-1$ is the direct gradient $g_t$. Run the forward pass, keep the states, then walk back
# with the recursion above. Return `(grad_w_ih, grad_w_hh, grad_b, grad_h0)`, shaped like
# `w_ih`, `w_hh`, `b` and `h0`. Do not use autograd: the tests compare you with it.


# %% nbgrader={"grade": false, "grade_id": "bptt", "locked": false, "schema_version": 3, "solution": true, "task": false}
def bptt(
    xs: torch.Tensor,
    h0: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b: torch.Tensor,
    grad_hs: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of L (with dL/dh_t direct = grad_hs[t-1]) for h_t = tanh(W_ih x_t + W_hh h_{t-1} + b).

    xs (T, I), h0 (H,), grad_hs (T, H) -> (dW_ih (H, I), dW_hh (H, H), db (H,), dh0 (H,)).
    """
    ### BEGIN SOLUTION
    states = [h0]  # states[t] = h_t, t = 0..T
    for x_t in xs:
        states.append(torch.tanh(w_ih @ x_t + w_hh @ states[-1] + b))
    grad_w_ih, grad_w_hh, grad_b = (
        torch.zeros_like(w_ih),
        torch.zeros_like(w_hh),
        torch.zeros_like(b),
    )
    delta = torch.zeros_like(h0)  # dL/dh_t arriving from step t + 1
    for t in range(len(xs), 0, -1):
        delta = delta + grad_hs[t - 1]  # add the direct gradient of step t
        r = delta * (1 - states[t] ** 2)  # dL/da_t, (H,)
        grad_w_hh += torch.outer(r, states[t - 1])
        grad_w_ih += torch.outer(r, xs[t - 1])
        grad_b += r
        delta = w_hh.T @ r  # dL/dh_{t-1} through a_t
    return grad_w_ih, grad_w_hh, grad_b, delta
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "bptt_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def _bptt_paired_with_h_t(xs, h0, w_ih, w_hh, b, grad_hs):
    """The off-by-one version: pairs r_t with h_t instead of h_{t-1}."""
    states, delta, grad = [h0], torch.zeros_like(h0), torch.zeros_like(w_hh)
    for x_t in xs:
        states.append(torch.tanh(w_ih @ x_t + w_hh @ states[-1] + b))
    for t in range(len(xs), 0, -1):
        r = (delta + grad_hs[t - 1]) * (1 - states[t] ** 2)
        grad += torch.outer(r, states[t])
        delta = w_hh.T @ r
    return grad


worked_ = (
    torch.tensor([[1.0], [0.5], [-1.0]], dtype=torch.float64),  # xs (T=3, I=1)
    torch.zeros(1, dtype=torch.float64),  # h0
    torch.tensor([[1.0]], dtype=torch.float64),  # w_ih = u
    torch.tensor([[0.5]], dtype=torch.float64),  # w_hh = w
    torch.zeros(1, dtype=torch.float64),  # b
    torch.tensor([[0.0], [0.0], [1.0]], dtype=torch.float64),  # L = h_3
)
result_ = bptt(*worked_)
check_equal(len(result_), 4, "number of gradients returned (dW_ih, dW_hh, db, dh0)")
check_close(
    result_[1],
    [[0.606460]],
    "dL/dw for L = h_3 in the worked example",
    atol=1e-6,
    hints={
        "off-by-one in BPTT: r_t multiplied by h_t instead of h_{t-1}": _bptt_paired_with_h_t(
            *worked_
        ),
        "only the last step's term (the gradient was not carried back through W_hh)": [[0.477680]],
    },
)
check_close(result_[0], [[-0.555764]], "dL/du (the input weight) in the worked example", atol=1e-6)
check_close(result_[2], [0.880416], "dL/db in the worked example", atol=1e-6)
check_close(result_[3], [0.017754], "dL/dh_0 in the worked example", atol=1e-6)
### BEGIN HIDDEN TESTS
gen_ = torch.Generator().manual_seed(5)
for steps_, in_, hid_, mask_ in [(7, 3, 5, None), (1, 2, 4, None), (12, 4, 3, [0, 5, 11])]:
    leaves_ = [
        torch.randn(steps_, in_, generator=gen_, dtype=torch.float64),
        torch.randn(hid_, generator=gen_, dtype=torch.float64) * 0.5,
        torch.randn(hid_, in_, generator=gen_, dtype=torch.float64) * 0.7,
        torch.randn(hid_, hid_, generator=gen_, dtype=torch.float64) * 0.7,
        torch.randn(hid_, generator=gen_, dtype=torch.float64) * 0.3,
    ]
    g_ = torch.randn(steps_, hid_, generator=gen_, dtype=torch.float64)
    if mask_ is not None:  # direct gradients at only a few steps
        keep_ = torch.zeros(steps_, 1, dtype=torch.float64)
        keep_[mask_] = 1.0
        g_ = g_ * keep_
    xs_, h0_, w_ih_, w_hh_, b_ = (t.clone().requires_grad_() for t in leaves_)
    h_, states_ = h0_, []
    for x_t_ in xs_:
        h_ = torch.tanh(w_ih_ @ x_t_ + w_hh_ @ h_ + b_)
        states_.append(h_)
    (torch.stack(states_) * g_).sum().backward()
    got_ = bptt(*leaves_, g_)
    what_ = f"T={steps_}, I={in_}, H={hid_}" + (
        "" if mask_ is None else f", direct gradients at steps {mask_}"
    )
    for name_, mine_, ref_ in zip(
        ("dW_ih", "dW_hh", "db", "dh0"), got_, (w_ih_, w_hh_, b_, h0_), strict=True
    ):
        check_close(mine_, ref_.grad, f"{name_} against autograd ({what_})", atol=1e-10, rtol=1e-8)
### END HIDDEN TESTS

# %% [markdown]
# ## 3. Vanishing and exploding gradients
#
# Unroll the recursion for $\delta$ from the last step back to step $t$. With
# $D_k = \operatorname{diag}(1 - h_k^2)$, the Jacobian of one step is
# $\partial h_k / \partial h_{k-1} = D_k W_{hh}$, and the gradient of the last step's loss
# with respect to an earlier state is
#
# $$ \frac{\partial \ell_T}{\partial h_t} = \Bigl(\frac{\partial h_T}{\partial h_t}\Bigr)^{\!\top} g_T,
#    \qquad \frac{\partial h_T}{\partial h_t} = \prod_{k=t+1}^{T} D_k\, W_{hh}
#    = D_T W_{hh}\, D_{T-1} W_{hh} \cdots D_{t+1} W_{hh} . $$
#
# That is a product of $T - t$ matrices, and products of many matrices behave exponentially
# {cite}`bengio1994learning,pascanu2013difficulty`.
#
# **The eigenvalue argument (linear case).** Drop the nonlinearity ($D_k = I$). Then
# $\partial h_T/\partial h_t = W_{hh}^{\,k}$ with $k = T - t$. If
# $W_{hh} = V \Lambda V^{-1}$ is diagonalisable, $W_{hh}^{\,k} = V \Lambda^k V^{-1}$: the
# component of the gradient along eigenvector $i$ is multiplied by $\lambda_i^k$. The largest
# $|\lambda_i|$, the *spectral radius* $\rho(W_{hh})$, wins: for $\rho < 1$ every component
# decays like $\rho^k$ (vanishing), for $\rho > 1$ the leading one grows like $\rho^k$
# (exploding). In one dimension this is just $w^k$: with $w = 0.9$ a signal 50 steps back is
# scaled by {glue:text}`w09_50`, with $w = 1.1$ by {glue:text}`w11_50`.
#
# **With the nonlinearity.** $0 < 1 - h^2 \le 1$, so each $D_k$ can only shrink. Using norms,
# $\lVert \partial h_T/\partial h_t \rVert \le \prod_k \lVert D_k \rVert \lVert W_{hh}\rVert
# \le \sigma_{\max}(W_{hh})^{k}$, where $\sigma_{\max}$ is the largest singular value. So
# $\sigma_{\max} < 1$ is *sufficient* for vanishing, and $\sigma_{\max} > 1$ is *necessary*
# (not sufficient) for exploding: saturated units ($|h| \approx 1$) have $1 - h^2 \approx 0$ and
# cut the product. In the experiment below $W_{hh} = \rho\,Q$ with $Q$ orthogonal, so every
# singular value and every eigenvalue modulus equals $\rho$ and the two conditions coincide.
#
# The practical consequence: when the gradient from 50 steps back is $10^{-6}$ of the one from
# the last step, the weights learn almost nothing about dependencies that long, however long
# you train. Exploding gradients are the louder failure: one step with a gradient $10^{6}$
# times too large throws the weights far away.
#
# ### Exercise 4: the Jacobian product
#
# Write `jacobian_norms(hs, w_hh)`. `hs` `(T+1, H)` holds the states $h_0, h_1, \dots, h_T$ of
# a tanh RNN (one sequence, row $t$ is $h_t$) and `w_hh` is its `(H, H)` recurrent matrix.
# Return a tensor `(T+1,)` whose entry $k$ is the spectral norm (largest singular value,
# `torch.linalg.matrix_norm(J, ord=2)`) of $J_k = \partial h_T / \partial h_{T-k}$, indexed by
# the **distance** $k$ back in time. $J_0 = I$, and $J_k = J_{k-1}\, D_{T-k+1} W_{hh}$.
#
# In the one-dimensional example ($w = 0.5$, states $0, 0.761594, 0.706818, -0.569370$) the
# answer is $(1, 0.337909, 0.084546, 0.017754)$: the $|\delta_t|$ column of the table above.


# %% nbgrader={"grade": false, "grade_id": "jacobian_norms", "locked": false, "schema_version": 3, "solution": true, "task": false}
def jacobian_norms(hs: torch.Tensor, w_hh: torch.Tensor) -> torch.Tensor:
    """Spectral norms of dh_T/dh_{T-k} for k = 0..T.  hs (T+1, H) = h_0..h_T, w_hh (H, H) -> (T+1,)."""
    ### BEGIN SOLUTION
    steps = hs.shape[0] - 1
    jac = torch.eye(w_hh.shape[0], dtype=hs.dtype, device=hs.device)  # J_0 = I
    norms = [torch.linalg.matrix_norm(jac, ord=2)]
    for k in range(1, steps + 1):
        step_jac = (1 - hs[steps - k + 1] ** 2).unsqueeze(1) * w_hh  # D_{T-k+1} W_hh, (H, H)
        jac = jac @ step_jac
        norms.append(torch.linalg.matrix_norm(jac, ord=2))
    return torch.stack(norms)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "jacobian_norms_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def _run_scalar_rnn(w: float, u: float, xs: list[float]) -> torch.Tensor:
    """States h_0..h_T (T+1, 1) of h_t = tanh(w h_{t-1} + u x_t) from h_0 = 0."""
    states = [torch.zeros(1, dtype=torch.float64)]
    for x in xs:
        states.append(torch.tanh(w * states[-1] + u * x))
    return torch.stack(states)


hs_worked_ = _run_scalar_rnn(0.5, 1.0, [1.0, 0.5, -1.0])
d_ = 1 - hs_worked_.flatten() ** 2
shifted_ = [1.0, 0.5 * d_[2], 0.25 * d_[2] * d_[1], 0.125 * d_[2] * d_[1] * d_[0]]
got_ = jacobian_norms(hs_worked_, torch.tensor([[0.5]], dtype=torch.float64))
check_shape(got_, (4,), "one norm per distance k = 0..3")
check_close(
    got_,
    [1.0, 0.337909, 0.084546, 0.017754],
    "||dh_3/dh_(3-k)|| for k = 0..3 in the worked example",
    atol=1e-6,
    hints={
        "ordered by time t instead of by distance k = T - t": [0.017754, 0.084546, 0.337909, 1.0],
        "off by one: used 1 - h_(T-k)^2 instead of 1 - h_(T-k+1)^2": shifted_,
        "forgot the tanh derivative D_k (this is the linear RNN, w^k)": [1.0, 0.5, 0.25, 0.125],
    },
)
### BEGIN HIDDEN TESTS
gen_ = torch.Generator().manual_seed(11)
for steps_, hid_, scale_ in [(10, 6, 1.2), (5, 3, 0.6), (1, 4, 2.0)]:
    xs_ = torch.randn(steps_, 2, generator=gen_, dtype=torch.float64)
    w_ih_ = torch.randn(hid_, 2, generator=gen_, dtype=torch.float64)
    w_hh_ = torch.randn(hid_, hid_, generator=gen_, dtype=torch.float64) * scale_ / hid_**0.5
    states_ = [torch.randn(hid_, generator=gen_, dtype=torch.float64) * 0.3]
    for x_t_ in xs_:
        states_.append(torch.tanh(w_ih_ @ x_t_ + w_hh_ @ states_[-1]))
    hs_ = torch.stack(states_)
    want_, frobenius_ = [], []
    for k_ in range(steps_ + 1):
        start_ = steps_ - k_

        def _to_last(h, start=start_, end=steps_, xs=xs_, w_ih=w_ih_, w_hh=w_hh_):
            for t in range(start, end):
                h = torch.tanh(w_ih @ xs[t] + w_hh @ h)
            return h

        jac_ = torch.autograd.functional.jacobian(_to_last, hs_[start_])
        want_.append(torch.linalg.matrix_norm(jac_, ord=2))
        frobenius_.append(torch.linalg.matrix_norm(jac_))
    check_close(
        jacobian_norms(hs_, w_hh_),
        torch.stack(want_),
        f"norms against autograd Jacobians (T={steps_}, H={hid_})",
        atol=1e-9,
        rtol=1e-7,
        hints={"Frobenius norm instead of the spectral norm (use ord=2)": torch.stack(frobenius_)},
    )
q_, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen_, dtype=torch.float64))
states_ = [torch.zeros(5, dtype=torch.float64)]
for _ in range(20):
    states_.append(
        torch.tanh(0.8 * q_ @ states_[-1] + torch.randn(5, generator=gen_, dtype=torch.float64))
    )
bound_ = 0.8 ** torch.arange(21, dtype=torch.float64)
check_close(
    jacobian_norms(torch.stack(states_), 0.8 * q_) <= bound_ + 1e-12,
    torch.ones(21, dtype=torch.bool),
    "norms must stay below sigma_max^k = 0.8^k for W_hh = 0.8 * orthogonal",
)
### END HIDDEN TESTS

# %% [markdown]
# ### Measuring it
#
# Now measure the gradient that matters for learning: $\lVert \partial \ell_T / \partial h_t \rVert$,
# where $\ell_T = v^\top h_T$ is a loss read off the last state only (a unit vector $v$), as a
# function of the distance $T - t$. The experiment uses the library's `RNNCell` with
# $H = 32$, $T = 60$ random inputs, $W_{hh} = \rho\,Q$ for several $\rho$, and averages the
# logarithm of the norm over a batch of 16 sequences. Autograd does the backward pass:
# `h.retain_grad()` asks it to keep the gradient of each intermediate state. The left panel
# drops the tanh (a linear RNN) so that the eigenvalue argument can be checked exactly; the
# right panel is the real tanh RNN.

# %% tags=["demo"] mystnb={"image": {"alt": "Two log-scale plots of the gradient norm of the last step's loss with respect to the hidden state against distance back in time, for spectral radii 0.5, 0.9, 1.0, 1.5 and 2.0. Left, linear RNN: straight lines with slope log rho, falling for rho below 1, flat at 1, rising above 1. Right, tanh RNN: every curve lies below its linear counterpart; rho 1.0 and below vanish, rho 2.0 still explodes."}}
HID, INP, STEPS, BATCH = 32, 8, 60, 16
RADII = [0.5, 0.9, 1.0, 1.5, 2.0]
gen = torch.Generator().manual_seed(0)
ortho, _ = torch.linalg.qr(
    torch.randn(HID, HID, generator=gen, dtype=torch.float64)
)  # Q: all singular values 1
inputs = torch.randn(STEPS, BATCH, INP, generator=gen, dtype=torch.float64)  # (T, B, I)
readout = F.normalize(torch.randn(HID, generator=gen, dtype=torch.float64), dim=0)  # v, |v| = 1


def grad_norm_by_distance(rho: float, nonlinear: bool) -> np.ndarray:
    """Geometric mean over the batch of ||d(v . h_T)/dh_{T-k}||, for k = 0..T -> (T+1,)."""
    cell = RNNCell(INP, HID).double()
    with torch.no_grad():
        cell.weight_hh.copy_(rho * ortho)
        cell.bias_ih.zero_()
        cell.bias_hh.zero_()
    h = torch.zeros(BATCH, HID, dtype=torch.float64, requires_grad=True)  # h_0
    states = [h]
    for x_t in inputs:
        h = cell(x_t, h) if nonlinear else x_t @ cell.weight_ih.T + h @ cell.weight_hh.T
        h.retain_grad()  # keep dL/dh_t for this intermediate state
        states.append(h)
    (h @ readout).sum().backward()
    norms = torch.stack([s.grad.norm(dim=1) for s in states])  # (T+1, B), row t = time t
    return norms.log().mean(dim=1).exp().flip(0).numpy()  # row k = distance T - k


measured = {(rho, nl): grad_norm_by_distance(rho, nl) for rho in RADII for nl in (False, True)}
distance = np.arange(STEPS + 1)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
for ax, nonlinear in zip(axes, (False, True), strict=True):
    for rho in RADII:
        line = ax.plot(distance, measured[(rho, nonlinear)], label=f"rho = {rho}")[0]
        if not nonlinear:
            ax.plot(distance, rho**distance, ":", color=line.get_color(), lw=3, alpha=0.5)
    ax.set(
        yscale="log",
        xlabel="distance back in time k = T - t",
        title="linear RNN (dotted: rho^k)" if not nonlinear else "tanh RNN (llmcourse RNNCell)",
    )
axes[0].set_ylabel("||d loss_T / d h_t||")
axes[1].legend(fontsize=8)
plt.tight_layout()
plt.show()

lin_err = max(
    float(np.max(np.abs(np.log(measured[(rho, False)]) - distance * np.log(rho)))) for rho in RADII
)
glue("w09_50", f"{0.9**50:.4f}")
glue("w11_50", f"{1.1**50:.0f}")
glue("lin_log_err", f"{lin_err:.1e}")
glue("tanh09_20", f"{measured[(0.9, True)][20]:.1e}")
glue("lin09_20", f"{0.9**20:.2f}")
glue("tanh10_50", f"{measured[(1.0, True)][50]:.1e}")
glue("tanh20_50", f"{measured[(2.0, True)][50]:.1e}")
print(f"linear RNN: largest |log(measured) - k log(rho)| = {lin_err:.1e}")
for rho in RADII:
    print(
        f"rho = {rho}: tanh RNN gradient norm at distance 10, 30, 60 = "
        + ", ".join(f"{measured[(rho, True)][k]:.1e}" for k in (10, 30, 60))
    )

# %% [markdown]
# The linear RNN follows $\rho^k$ exactly (the largest deviation of the log-norm from
# $k \log\rho$ is {glue:text}`lin_log_err`): an orthogonal matrix scaled by $\rho$ scales every
# vector by exactly $\rho$. The tanh RNN sits below: at distance 20 with $\rho = 0.9$ the
# gradient is {glue:text}`tanh09_20` against {glue:text}`lin09_20` for the linear network,
# because every $D_k$ shrinks it further. Even $\rho = 1$, where the linear RNN would keep the
# gradient intact forever, vanishes to {glue:text}`tanh10_50` at distance 50. With $\rho = 2$
# the gradient still explodes (to {glue:text}`tanh20_50` at distance 50): the derivative
# factors slow the growth down but do not stop it. No single value of $\rho$ keeps the
# gradient both bounded and alive over long distances: this is what gated cells (chapter 03)
# are designed to improve.
#
# ## 4. Gradient clipping
#
# Exploding gradients have a cheap cure: clip the gradient's global norm before each step
# {cite}`pascanu2013difficulty`. If $\lVert g \rVert > c$, rescale every gradient by
# $c / \lVert g \rVert$; the direction is kept and the step length is bounded. You wrote this
# in chapter 00; here we use `llmcourse.optim.clip_grad_norm`. Clipping does nothing for
# vanishing gradients: a tiny gradient stays tiny.
#
# The demonstration trains the same small character RNN (the model of section 6) twice with
# plain SGD at a deliberately large learning rate of 3, once without and once with clipping
# at norm 1, on the same batches of Tiny Shakespeare.

# %% tags=["demo"]
from llmcourse.data import get_batch, load_text
from llmcourse.models.char_rnn import CharRNN
from llmcourse.optim import SGD, Adam, clip_grad_norm, global_grad_norm, lr_at
from llmcourse.tokenizers import CharTokenizer

text = load_text("tinyshakespeare")
tok = CharTokenizer.from_text(text)
ids = torch.tensor(tok.encode(text))  # (N,) one id per character
n_train = int(0.9 * len(ids))
train_ids, val_ids = ids[:n_train], ids[n_train:]
print(f"Tiny Shakespeare: {len(ids):,} characters, vocabulary of {tok.vocab_size}")
print(f"train {len(train_ids):,} / validation {len(val_ids):,} characters")
print(repr(text[:120]))


# %% tags=["demo"] mystnb={"image": {"alt": "Left: training loss of a character RNN with SGD at learning rate 3; without clipping the loss jumps far above its starting value, with clipping at norm 1 it falls steadily. Right: the gradient norm before clipping on a log scale; without clipping it spikes by three orders of magnitude early on and stays noisy, with clipping it settles below 1 after the first steps."}}
def sgd_run(max_norm: float | None, steps: int = 120) -> tuple[list[float], list[float]]:
    """Train a fresh char RNN with SGD(lr=3); returns (losses, gradient norms before clipping)."""
    torch.manual_seed(0)
    model = CharRNN(tok.vocab_size, embed_dim=32, hidden_size=128, num_layers=1, cell="rnn")
    optimizer = SGD(model.parameters(), lr=3.0)
    batches = torch.Generator().manual_seed(1)  # same batches for both runs
    losses, norms = [], []
    for step in range(steps):
        x, y = get_batch(train_ids, 64, 32, generator=batches)  # (32, 64) each
        loss, _ = model.loss(x, y)
        if not math.isfinite(loss.item()):
            if max_norm is None:  # the unclipped run is allowed to diverge: that is the point
                print(f"unclipped run: loss became {loss.item()} at step {step}, stopped")
                break
            raise FloatingPointError(f"clipped run: loss became {loss.item()} at step {step}")
        optimizer.zero_grad()
        loss.backward()
        if max_norm is None:
            norm = global_grad_norm(model.parameters())
        else:
            norm = clip_grad_norm(model.parameters(), max_norm)
        optimizer.step()
        losses.append(loss.item())
        norms.append(norm.item())
    return losses, norms


t0 = time.perf_counter()
runs = {"no clipping": sgd_run(None), "clip at norm 1": sgd_run(1.0)}
print(f"two runs of 120 steps: {time.perf_counter() - t0:.1f} s")
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
for name, (losses, norms) in runs.items():
    ax1.plot(losses, label=name)
    ax2.plot(norms, label=name)
ax1.axhline(math.log(tok.vocab_size), color="gray", ls=":", label="ln V (uniform guess)")
ax1.set(xlabel="step", ylabel="cross-entropy (nats)", title="SGD, learning rate 3")
ax2.set(
    xlabel="step",
    ylabel="global gradient norm",
    yscale="log",
    title="gradient norm before clipping",
)
ax1.legend()
ax2.legend()
plt.tight_layout()
plt.show()
for name, (losses, norms) in runs.items():
    print(
        f"{name:>15}: final loss {losses[-1]:.3f}, highest loss {max(losses):.2f}, "
        f"largest norm {max(norms):.1f}"
    )
clipped_steps = sum(n > 1.0 for n in runs["clip at norm 1"][1])
print(f"the clipped run was clipped at {clipped_steps} of 120 steps")
glue("clip_off_max_loss", f"{max(runs['no clipping'][0]):.0f}")
glue("clip_off_max_norm", f"{max(runs['no clipping'][1]):.0f}")
glue("clip_off_final", f"{runs['no clipping'][0][-1]:.2f}")
glue("clip_on_final", f"{runs['clip at norm 1'][0][-1]:.2f}")
glue("clip_on_count", f"{clipped_steps}")
glue("ln_vocab", f"{math.log(tok.vocab_size):.2f}")

# %% [markdown]
# Without clipping the gradient norm reaches {glue:text}`clip_off_max_norm` and the loss jumps
# to {glue:text}`clip_off_max_loss` nats, far above the {glue:text}`ln_vocab` of a uniform
# guess; after 120 steps it is still at {glue:text}`clip_off_final`. With clipping the same
# learning rate and the same batches give a steadily falling loss, ending at
# {glue:text}`clip_on_final`. The clip was active at only {glue:text}`clip_on_count` of the 120
# steps, almost all early in training, when the gradient is largest: bounding those few steps
# was enough to keep the run on track. In practice one clips at a norm of about 1 and logs the
# norm before clipping: spikes in it are the first sign of trouble.
#
# ## 5. Truncated backpropagation through time
#
# Tiny Shakespeare is a single sequence of a million characters. Full BPTT over it would keep
# a million hidden states in memory for one update. *Truncated* BPTT {cite}`williams1990tbptt`
# cuts the sequence into chunks of $T$ steps and:
#
# 1. runs the forward pass over one chunk, **starting from the final state of the previous
#    chunk**, so the model still sees context longer than $T$;
# 2. backpropagates only within the chunk: the incoming state is treated as a constant
#    (`detach`), so no gradient flows into earlier chunks;
# 3. updates the weights and moves on to the next chunk.
#
# To use a batch, the text is split into $B$ long contiguous streams, one per batch row, and
# all rows advance through their stream together:
#
# ```text
# row 0: |chunk 0 of stream 0|chunk 1 of stream 0|chunk 2 ...     state carried -->
# row 1: |chunk 0 of stream 1|chunk 1 of stream 1|chunk 2 ...     gradient stops at each |
# ...
# ```
#
# The price is that the gradient cannot teach the model to keep information for longer than
# $T$ steps, even though the forward pass could carry it. `llmcourse.recurrent.detach_state`
# does the cut (for an LSTM it detaches both $h$ and $c$). The cell below shows it: the loss on
# the second chunk sends a gradient into the first chunk's inputs unless the state is detached.

# %%
torch.manual_seed(0)
tiny_rnn = RNN(input_size=3, hidden_size=4, batch_first=True)
chunk1 = torch.randn(1, 5, 3, requires_grad=True)  # (B, T, I)
chunk2 = torch.randn(1, 5, 3)
for cut in (False, True):
    chunk1.grad = None
    _, state = tiny_rnn(chunk1)  # state (L, B, H) after the first chunk
    if cut:
        state = detach_state(state)
    out2, _ = tiny_rnn(chunk2, state)  # the second chunk starts where the first ended
    out2.sum().backward()
    reached = "nothing" if chunk1.grad is None else f"a gradient of norm {chunk1.grad.norm():.3f}"
    print(
        f"detach_state {'used' if cut else 'not used'}: the first chunk's inputs receive {reached}"
    )

# %% [markdown]
# ## 6. A character-level language model
#
# A character RNN {cite}`karpathy2015charrnn` predicts the next character from the ones
# before it. Each character id is mapped to a learned vector (an embedding), the RNN runs over
# the embeddings, and a linear layer turns every state into one logit per character of the
# vocabulary:
#
# $$ e_t = E[c_t], \qquad h_t = \tanh(W_{ih} e_t + W_{hh} h_{t-1} + b), \qquad
#    p(c_{t+1} \mid c_{\le t}) = \operatorname{softmax}(W_{hy} h_t + b_y) . $$
#
# The loss is the mean cross-entropy of the true next character, in nats; divided by
# $\ln 2$ it is in *bits per character*. Predicting uniformly over the $V$ characters costs
# $\ln V$.
#
# **Sampling.** To generate, feed a prompt, turn the last logits $z$ into probabilities, draw a
# character, feed it back in, repeat: one forward step per generated character. A
# *temperature* $\tau > 0$ reshapes the distribution before drawing:
#
# $$ p_i(\tau) = \frac{e^{z_i/\tau}}{\sum_j e^{z_j/\tau}} . $$
#
# $\tau = 1$ is the model's own distribution; $\tau < 1$ sharpens it towards the most likely
# character (safer, more repetitive text); $\tau > 1$ flattens it (more varied, more
# mistakes). The limit $\tau \to 0$ is *greedy* decoding: always the arg-max.
#
# ### Exercise 5 (worked numbers): temperature
#
# Write `temperature_probs(logits, temperature)` returning the probabilities $p(\tau)$ over the
# last axis of `logits` (any leading shape). `temperature == 0` must return the one-hot vector
# of the arg-max, and a negative temperature must raise `ValueError`. Check by hand: for
# logits $(2, 1, 0)$, $\tau = 1$ gives $(0.665, 0.245, 0.090)$ and $\tau = 0.5$ gives the
# softmax of $(4, 2, 0)$, that is $(0.867, 0.117, 0.016)$. Large logits must not overflow.


# %% nbgrader={"grade": false, "grade_id": "temperature_probs", "locked": false, "schema_version": 3, "solution": true, "task": false}
def temperature_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax of logits / temperature over the last axis; temperature 0 -> one-hot arg-max. (..., V) -> (..., V)."""
    ### BEGIN SOLUTION
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(logits.dtype)
    return torch.softmax(logits / temperature, dim=-1)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "temperature_probs_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
z_ = torch.tensor([2.0, 1.0, 0.0])
check_close(
    temperature_probs(z_, 1.0),
    [0.665241, 0.244728, 0.090031],
    "probabilities of logits (2, 1, 0) at temperature 1",
)
check_close(
    temperature_probs(z_, 0.5),
    [0.866813, 0.117310, 0.015876],
    "probabilities of logits (2, 1, 0) at temperature 0.5",
    hints={
        "multiplied the logits by the temperature instead of dividing": torch.softmax(z_ * 0.5, -1)
    },
)
check_close(
    temperature_probs(z_, 0.0), [1.0, 0.0, 0.0], "temperature 0 (greedy: one-hot of the arg-max)"
)
### BEGIN HIDDEN TESTS
zb_ = torch.randn(4, 7, 65, generator=torch.Generator().manual_seed(2)) * 3
for tau_ in (0.3, 1.0, 2.5):
    check_close(
        temperature_probs(zb_, tau_),
        torch.softmax(zb_ / tau_, dim=-1),
        f"batched (4, 7, 65) logits at temperature {tau_}",
        atol=1e-6,
    )
check_close(
    temperature_probs(zb_, 0.0),
    F.one_hot(zb_.argmax(-1), 65).float(),
    "batched logits at temperature 0",
)
check_close(
    temperature_probs(torch.tensor([1000.0, 0.0, -5.0]), 0.5),
    [1.0, 0.0, 0.0],
    "logits (1000, 0, -5) at temperature 0.5 (must not overflow)",
)
check_close(
    temperature_probs(z_, 100.0),
    torch.softmax(z_ / 100, -1),
    "a high temperature flattens the distribution",
)
check_raises(lambda: temperature_probs(z_, -1.0), ValueError, "a negative temperature")
### END HIDDEN TESTS

# %% [markdown]
# ### Training with truncated BPTT
#
# The run below trains the library's `CharRNN` (embedding 32, one Elman layer of 128 units)
# with everything from this chapter and chapter 00: 32 streams, chunks of 64 characters with
# the state carried and detached between chunks, Adam with a linear warm-up and cosine decay,
# and clipping at norm 1. It is a short live run sized for a laptop CPU. The validation loss is
# measured on 16 windows of 256 held-out characters, each read from a zero state.

# %% tags=["demo"] mystnb={"image": {"alt": "Training loss of the character RNN (raw and smoothed) and validation loss measured every 100 steps, both falling from about 4.2 nats towards below 2 over 600 steps; a dotted line marks ln 65, the loss of a uniform guess."}}
BATCH_ROWS, CHUNK, TRAIN_STEPS, MAX_LR = 32, 64, 600, 1e-2
stream_len = (len(train_ids) - 1) // BATCH_ROWS
x_streams = train_ids[: BATCH_ROWS * stream_len].view(
    BATCH_ROWS, stream_len
)  # (B, S): row b = stream b
y_streams = train_ids[1 : BATCH_ROWS * stream_len + 1].view(
    BATCH_ROWS, stream_len
)  # next characters
chunks_per_pass = stream_len // CHUNK
n_val = (len(val_ids) - 1) // 256
val_x = val_ids[: n_val * 256].view(n_val, 256)[:16]  # (16, 256)
val_y = val_ids[1 : n_val * 256 + 1].view(n_val, 256)[:16]

torch.manual_seed(0)
char_rnn = CharRNN(tok.vocab_size, embed_dim=32, hidden_size=128, num_layers=1, cell="rnn")
optimizer = Adam(char_rnn.parameters(), lr=MAX_LR)
n_params = sum(p.numel() for p in char_rnn.parameters())


def validation_loss(model: CharRNN) -> float:
    """Mean next-character cross-entropy on the fixed validation windows, from a zero state."""
    with torch.no_grad():
        return model.loss(val_x, val_y)[0].item()


train_losses, val_points = [], [(0, validation_loss(char_rnn))]
state = None
t0 = time.perf_counter()
for step in range(TRAIN_STEPS):
    chunk = step % chunks_per_pass
    if chunk == 0:
        state = None  # start of a pass over the streams: fresh zero state
    cols = slice(chunk * CHUNK, (chunk + 1) * CHUNK)
    for group in optimizer.param_groups:
        group["lr"] = lr_at(
            step, max_lr=MAX_LR, min_lr=MAX_LR / 10, warmup_steps=20, decay_steps=TRAIN_STEPS
        )
    loss, state = char_rnn.loss(x_streams[:, cols], y_streams[:, cols], state)
    state = detach_state(state)  # truncated BPTT: keep the values, cut the graph
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"char-RNN loss became {loss.item()} at step {step}")
    optimizer.zero_grad()
    loss.backward()
    clip_grad_norm(char_rnn.parameters(), 1.0)
    optimizer.step()
    train_losses.append(loss.item())
    if (step + 1) % 100 == 0:
        val_points.append((step + 1, validation_loss(char_rnn)))
train_seconds = time.perf_counter() - t0
final_val = val_points[-1][1]
if final_val > 2.3:  # a healthy run of this size ends well below; something is broken otherwise
    raise RuntimeError(
        f"validation loss {final_val:.2f} after {TRAIN_STEPS} steps: training went wrong"
    )

smooth = np.convolve(train_losses, np.ones(20) / 20, mode="valid")
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(train_losses, alpha=0.3, label="training loss (per chunk)")
ax.plot(np.arange(19, TRAIN_STEPS), smooth, label="training loss (mean of 20)")
ax.plot(*zip(*val_points, strict=True), "o-", label="validation loss")
ax.axhline(math.log(tok.vocab_size), color="gray", ls=":", label="ln V (uniform guess)")
ax.set(
    xlabel="step (32 x 64 characters)",
    ylabel="cross-entropy (nats)",
    title="char-RNN on Tiny Shakespeare",
)
ax.legend()
plt.show()
print(f"{n_params:,} parameters, {TRAIN_STEPS} steps in {train_seconds:.1f} s")
print(f"validation loss {final_val:.3f} nats = {final_val / math.log(2):.2f} bits per character")
glue("char_params", f"{n_params:,}")
glue("char_seconds", f"{train_seconds:.0f}")
glue("char_val", f"{final_val:.2f}")
glue("char_bpc", f"{final_val / math.log(2):.2f}")

# %% [markdown]
# After {glue:text}`char_seconds` seconds of training the {glue:text}`char_params`-parameter
# model reaches a validation loss of {glue:text}`char_val` nats, or
# {glue:text}`char_bpc` bits per character, against {glue:text}`ln_vocab` nats for a uniform
# guess. Training loss and validation loss are close: a model this small underfits rather than
# memorises. Here is what it writes, at two temperatures (`CharRNN.sample` applies the
# temperature exactly as your Exercise 5 does and draws with `torch.multinomial`):

# %% tags=["demo"]
for tau in (0.5, 1.0):
    sampler = torch.Generator().manual_seed(42)
    sample = char_rnn.sample(tok, "ROMEO:\n", 300, temperature=tau, generator=sampler)
    print(f"----- temperature {tau} -----")
    print(sample)

t0 = time.perf_counter()
char_rnn.sample(tok, "ROMEO:\n", 500, temperature=1.0, generator=torch.Generator().manual_seed(0))
ms_per_char = (time.perf_counter() - t0) / 500 * 1000
print(f"\ngeneration: {ms_per_char:.2f} ms per character, one recurrent step each")
glue("ms_per_char", f"{ms_per_char:.2f}")

# %% [markdown]
# At temperature 0.5 the model keeps to its most likely choices: frequent short words such as
# "the" and "and", repeated often. At temperature 1 the text is more varied and contains more
# invented words. Neither is Shakespeare, but from characters alone, in a short run, the model
# picked up the spelling of common words, spaces and punctuation, and line breaks followed by
# capitalised line starts.
#
# Generation is sequential: every new character needs its own forward step, because its input
# is the character just drawn. For an RNN each step costs the same
# ({glue:text}`ms_per_char` ms here) however long the text already is, because the whole
# history lives in the fixed-size state. That same fixed size is the RNN's weakness: everything
# the model remembers must fit into 128 numbers, and the gradient signal that could teach it
# what to keep fades with distance, as measured in section 3.
#
# ```{admonition} Common misconceptions
# :class: warning
#
# - **"LSTMs (and GRUs) solve the vanishing-gradient problem."** They *reduce* it: the
#   additive cell-state path lets gradients survive much longer than in an Elman RNN, but over
#   long enough distances they still decay (the forget gate is usually below 1), and they can
#   still explode. Chapter 03 measures this.
# - **"The RNN looks at all past inputs (equally)."** An Elman step sees only $x_t$ and
#   $h_{t-1}$; an LSTM step only $x_t$, $h_{t-1}$ and $c_{t-1}$. Everything older survives only
#   as far as it was kept in that fixed-size state, and gates keep information *selectively*,
#   not all of it equally.
# - **"A language model generates the whole answer in one forward pass."** Generation needs
#   one forward pass per output token, since each token is an input to the next step. (Reading
#   the prompt can be done in one call; producing $n$ new tokens takes $n$ steps.)
# - **"Spectral radius above 1 means exploding gradients, below 1 means vanishing."** For a
#   linear RNN, yes. With tanh the derivative factors only shrink the product: a largest
#   singular value above 1 is *necessary* for explosion but not sufficient, and the gradient
#   can vanish even at $\rho = 1$, as measured in section 3.
# - **"Gradient clipping fixes vanishing and exploding gradients."** Clipping bounds the step
#   when the gradient explodes. It cannot enlarge a gradient that has vanished; that needs a
#   different architecture (gates, residual paths) or better initialisation.
# - **"Truncated BPTT with chunks of $T$ means the model cannot use context longer than $T$."**
#   The state is carried across chunks, so information from further back can still influence
#   predictions; what is lost is the gradient that would teach the model to *keep* it.
# ```
#
# ## Summary
#
# You wrote the Elman cell and its unrolled forward pass (matching `torch.nn.RNN`), backpropagation
# through time by hand (matching autograd, with the $h_{t-1}$ pairing that the off-by-one bug
# gets wrong), and the Jacobian product whose norms decide whether gradients vanish or explode.
# The measurements confirmed the eigenvalue argument for a linear RNN and showed that tanh only
# makes vanishing worse. Global-norm clipping made a too-large learning rate usable, truncated
# BPTT made a million-character corpus trainable in fixed memory, and a small character RNN
# learned the shape of a play in a short live run. The library versions
# (`llmcourse.recurrent.RNNCell`, `RNN`, `detach_state`, `llmcourse.models.char_rnn.CharRNN`)
# are what chapters 03 and 04 build on.
#
# ## References
#
# {cite}`elman1990finding` (the Elman network), {cite}`rumelhart1986learning` and
# {cite}`werbos1990bptt` (backpropagation, through time), {cite}`williams1990tbptt`
# (truncated BPTT), {cite}`bengio1994learning` and {cite}`pascanu2013difficulty` (vanishing and
# exploding gradients, clipping), {cite}`karpathy2015charrnn` (character RNNs),
# {cite}`hochreiter1997lstm` (the LSTM, next chapter), {cite}`goodfellow2016deep` (chapter 10).
# Full entries are on the [bibliography](../book/bibliography.md) page.
