# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% tags=["remove-cell", "colab-setup"]
# Setup: in Google Colab this installs the course library; elsewhere it does nothing.
import importlib.util, subprocess, sys
NEEDS = "0.1.0"
if "google.colab" in sys.modules:
    installed = None
    if importlib.util.find_spec("llmcourse"):
        import llmcourse
        installed = llmcourse.__version__
    if installed != NEEDS:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                        "llmcourse @ git+https://github.com/llmcourse/rnn-to-rlhf@main"], check=True)
        print("Installed llmcourse", NEEDS, "- no runtime restart needed." if installed is None
              else "- please restart the runtime (Runtime > Restart session) once.")

# %% [markdown]
# # 11 Alignment: RLHF and DPO
#
# A pretrained language model continues text the way its training data did. That is not the
# same as doing what people want: a model that has read the internet continues a question with
# more questions, a rude prompt with rudeness, and a request for a summary with whatever
# usually followed such requests. **Alignment** trains the model on a second signal: human
# *preferences* between its own outputs. Preferences are cheap to collect (comparing two
# answers is much easier than writing a perfect one) and they capture qualities that are hard
# to write down as a loss: helpfulness, tone, honesty, format.
#
# ```text
#  pretraining            supervised fine-tuning        preference learning
#  (next token on   -->   (SFT: demonstrations   -->   RLHF:  reward model --> PPO
#   raw text)              of good answers)             or:    DPO / IPO / KTO / ORPO / SimPO
# ```
#
# This chapter builds the whole right-hand box. We write the losses (Bradley-Terry, the PPO
# clipped surrogate, GAE, DPO), then use the course library to align the course's own
# Shakespeare GPT towards a preference we can compute in code, with DPO and with PPO, and
# measure what we get: reward, distance from the starting model, win-rate, and what happens
# when the distance is not held in check.
#
# **Learning objectives.** After this chapter you can
#
# 1. explain how preference data is collected and why a ranking of $K$ answers gives
#    $\binom{K}{2}$ comparisons;
# 2. derive the Bradley-Terry loss and train a reward model with it;
# 3. write the KL-regularised RLHF objective, PPO's clipped surrogate and generalised
#    advantage estimation (GAE), and name the four models PPO-based RLHF keeps in memory;
# 4. derive DPO from the RLHF objective and implement its loss;
# 5. align a small GPT with DPO and with PPO, plot reward against KL from the reference, and
#    measure win-rates on held-out prompts;
# 6. recognise reward hacking and explain how the KL penalty prevents it;
# 7. say what IPO, KTO, ORPO and SimPO change in DPO and which problem each addresses.
#
# **How to use this notebook.** Cells marked *Exercise* are graded: replace
# `raise NotImplementedError()` with your code, then run the test cell below it. The visible
# tests tell you what was expected and what came back; hidden tests run at grading time.
# Demonstrations call the course library `llmcourse`, so they work before you solve anything.

# %%
import copy
import math
import random
import re
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import llmcourse
import llmcourse.alignment as la
from llmcourse.checks import check_close, check_equal, check_raises
from llmcourse.display import glue

torch.manual_seed(0)
torch.set_num_threads(1)  # a model this small trains and samples fastest on one thread
print("llmcourse", llmcourse.__version__, "| torch", torch.__version__)


# %% [markdown]
# ## 1. Preference data
#
# InstructGPT {cite}`ouyang2022instructgpt`, the recipe behind the first ChatGPT, collected
# preferences like this: for a prompt $x$, sample $K$ answers from the current model (between
# 4 and 9), and ask a labeller to **rank** them from best to worst. A ranking is more
# informative than one comparison: every pair of positions in it is a comparison "$y_i$ is
# better than $y_j$". A ranking of $K$ answers holds
#
# $$ \binom{K}{2} = \frac{K (K - 1)}{2} $$
#
# such pairs: 6 for $K = 4$, 36 for $K = 9$. They are not independent (they share the prompt
# and the answers), so InstructGPT put all pairs of one ranking in the same batch instead of
# shuffling them into different ones, which made the reward model overfit.
#
# A preference dataset is therefore a list of triples $(x, y_w, y_l)$: a prompt, the preferred
# ("winning", *chosen*) response and the dispreferred ("losing", *rejected*) one.
#
# ### Exercise 1 (worked numbers): from rankings to pairs
#
# Write `comparison_pairs(ranked)`: given responses listed best first, return every
# `(better, worse)` pair, in the order `(r0, r1), (r0, r2), ..., (r1, r2), ...`. Then
# `len(comparison_pairs(list(range(4))))` is 6 and for 9 responses it is 36.

# %% nbgrader={"grade": false, "grade_id": "comparison_pairs", "locked": false, "schema_version": 3, "solution": true, "task": false}
def comparison_pairs(ranked: list) -> list[tuple]:
    """All (better, worse) pairs of a ranking given best first: C(K, 2) of them."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %% nbgrader={"grade": true, "grade_id": "comparison_pairs_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
pairs_abcd = comparison_pairs(["A", "B", "C", "D"])
check_equal(len(pairs_abcd), 6, "number of pairs from a ranking of K = 4 responses")
check_equal(
    len(comparison_pairs(list(range(9)))), 36, "number of pairs from a ranking of K = 9 responses"
)
check_equal(
    pairs_abcd,
    [("A", "B"), ("A", "C"), ("A", "D"), ("B", "C"), ("B", "D"), ("C", "D")],
    "pairs of the ranking A > B > C > D, better response first",
)


# %% [markdown]
# ## 2. The reward model and the Bradley-Terry loss
#
# Rankings are relative, but reinforcement learning needs a number per response. The
# **Bradley-Terry** model {cite}`bradley1952rank` connects the two: give every response a
# scalar score $r(x, y)$ and say that a labeller prefers $y_w$ to $y_l$ with probability
#
# $$ P(y_w \succ y_l \mid x) = \frac{e^{r(x, y_w)}}{e^{r(x, y_w)} + e^{r(x, y_l)}}
#    = \sigma\bigl(r(x, y_w) - r(x, y_l)\bigr). $$
#
# Maximising the likelihood of the observed preferences gives the pairwise loss
#
# $$ \mathcal{L}_{\text{BT}} = -\,\mathbb{E}_{(x, y_w, y_l)}
#    \log \sigma\bigl(r_\phi(x, y_w) - r_\phi(x, y_l)\bigr). $$
#
# Only *differences* of rewards enter: adding a constant to every reward changes nothing, so
# the scale of a reward model's output means nothing by itself. The reward model $r_\phi$ is
# a copy of the language model with its vocabulary head replaced by a linear layer that maps
# the hidden state of the last token to one number ({cite}`christiano2017deep`,
# {cite}`ouyang2022instructgpt`); the library's `RewardModel` does exactly that.
#
# Numerically, $\log \sigma(z)$ must not be computed as `log(sigmoid(z))`: for $z = -200$
# the sigmoid underflows to 0 and the log gives $-\infty$. Use `F.logsigmoid`, or
# $\log\sigma(z) = -\operatorname{softplus}(-z)$.
#
# ### Exercise 2: the Bradley-Terry loss
#
# Write `bradley_terry_loss(chosen_rewards, rejected_rewards)` for two tensors of shape `(N,)`
# returning the **mean** of $-\log\sigma(r_w - r_l)$ as a 0-dim tensor, stable for large
# reward gaps. For rewards $r_w = 2, r_l = 0$ the loss is $\log(1 + e^{-2}) = 0.1269$.

# %% nbgrader={"grade": false, "grade_id": "bradley_terry", "locked": false, "schema_version": 3, "solution": true, "task": false}
def bradley_terry_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor
) -> torch.Tensor:
    """Mean of -log sigmoid(r_chosen - r_rejected) over pairs; inputs (N,), output 0-dim."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %% nbgrader={"grade": true, "grade_id": "bradley_terry_test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
check_close(
    bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0])),
    math.log(1 + math.exp(-2)),
    "loss for r_w = 2, r_l = 0",
    hints={
        "chosen and rejected swapped": math.log(1 + math.exp(2)),
        "forgot the minus sign": -math.log(1 + math.exp(-2)),
    },
)
rw_, rl_ = torch.tensor([1.0, 0.5, -2.0]), torch.tensor([0.0, 1.5, -2.0])
check_close(
    bradley_terry_loss(rw_, rl_),
    -F.logsigmoid(rw_ - rl_).mean(),
    "mean loss over three pairs",
    hints={"summed instead of averaged": -F.logsigmoid(rw_ - rl_).sum()},
)
check_close(
    bradley_terry_loss(torch.tensor([-200.0]), torch.tensor([0.0])),
    200.0,
    "loss for a reward gap of -200 (use logsigmoid, not log(sigmoid))",
)

# %% [markdown]
# ### Our labeller: a preference computed in code
#
# Human labels are expensive, and with them we could never tell how well a method did: the
# only judge would be more humans. So this chapter replaces the labeller by a **programmatic
# preference**: our "reader" prefers *plain speech*, and scores a continuation by the number of
# words it manages to fit into a fixed 40 characters. More, shorter words score higher. The
# reward is a simple proxy for "plain", as real reward models are proxies for "helpful", and it
# has the same weakness: it can be satisfied in ways nobody intended.
#
# The model to align is the course's base GPT from chapter 07: 4 layers, 128 wide, about
# 0.8M parameters, trained on Tiny Shakespeare at the character level. Prompts are 24-character
# snippets of the corpus that end at a word boundary: the training prompts come from the first
# 90% of the text, the held-out prompts from the last 10%.

# %%
from llmcourse.data import load_text
from llmcourse.hub import load_hf_gpt2, load_pretrained

base, tokenizer = load_pretrained("gpt-shakespeare-char")  # eval mode, on the CPU
base.requires_grad_(False)
corpus = load_text("tinyshakespeare")
print(
    f"base GPT: {base.num_parameters():,} parameters, vocabulary {tokenizer.vocab_size}, "
    f"block size {base.config.block_size}"
)

COMPLETION_CHARS = 40


def plain_speech_reward(text: str) -> float:
    """Our programmatic labeller: the number of words (runs of letters) in ``text``."""
    return float(len(re.findall(r"[A-Za-z]+", text)))


def corpus_prompts(n: int, seed: int, start: int, stop: int, length: int = 24) -> list[str]:
    """``n`` snippets of ``length`` characters from corpus[start:stop], each ending at a space."""
    rng = random.Random(seed)
    prompts: list[str] = []
    while len(prompts) < n:
        end = corpus.find(" ", rng.randrange(start + length, stop - length)) + 1
        snippet = corpus[end - length : end]
        if "\n\n" not in snippet:  # stay inside one speech
            prompts.append(snippet)
    return prompts


split = int(0.9 * len(corpus))
train_prompts = corpus_prompts(256, seed=0, start=0, stop=split)
test_prompts = corpus_prompts(64, seed=1, start=split, stop=len(corpus))
print(
    f"{len(train_prompts)} training prompts, {len(test_prompts)} held-out prompts, e.g. {test_prompts[0]!r}"
)
print("reward of 'O my good lord, I am here.':", plain_speech_reward("O my good lord, I am here."))


# %% [markdown]
# Two measurements follow every model in this chapter, both on the held-out prompts: the mean
# **reward** of its samples, and its **KL divergence from the reference** (the base model),
# estimated from the same samples as
#
# $$ \mathrm{KL}(\pi \,\|\, \pi_{\text{ref}}) = \mathbb{E}_{y \sim \pi}\Bigl[\sum_t
#    \log \pi(y_t \mid x, y_{<t}) - \log \pi_{\text{ref}}(y_t \mid x, y_{<t})\Bigr], $$
#
# in nats per 40-character completion. KL says how far the model had to move to earn its
# reward; reward without KL says little.

# %%
@torch.no_grad()
def evaluate(model: torch.nn.Module, prompts: list[str], seed: int = 123) -> dict:
    """Sample one completion per prompt; mean reward, KL from ``base`` (nats), texts, rewards."""
    model.eval()
    rollout = la.sample_responses(
        model,
        tokenizer,
        prompts,
        COMPLETION_CHARS,
        stop=None,
        generator=torch.Generator().manual_seed(seed),
    )
    batch = rollout.to_batch()
    logp = la.token_logprobs(model(batch.input_ids).logits, batch.targets).sum(1)  # (B,)
    ref_logp = la.token_logprobs(base(batch.input_ids).logits, batch.targets).sum(1)  # (B,)
    rewards = [plain_speech_reward(text) for text in rollout.responses]
    return {
        "reward": float(np.mean(rewards)),
        "kl": (logp - ref_logp).mean().item(),
        "responses": rollout.responses,
        "rewards": rewards,
    }


# %% tags=["demo"]
start_time = time.perf_counter()
base_eval = evaluate(base, test_prompts)
for prompt, response, reward in list(
    zip(test_prompts, base_eval["responses"], base_eval["rewards"], strict=True)
)[:4]:
    print(f"{prompt!r} -> {response!r}   reward {reward:.0f}")
print(
    f"\nbase model: mean reward {base_eval['reward']:.2f} on {len(test_prompts)} held-out prompts"
)
glue("base_reward", f"{base_eval['reward']:.2f}")

# %% [markdown]
# The base model fits {glue:text}`base_reward` words into 40 characters on average.
#
# **Collecting preferences.** As InstructGPT did, we sample $K = 4$ continuations of every
# training prompt from the model to be aligned, let the labeller rank them, and turn each
# ranking into its $\binom{4}{2} = 6$ pairs (dropping ties: our labeller gives equal scores
# to continuations with the same number of words).

# %% tags=["demo"]
K = 4
samples = la.sample_responses(
    base,
    tokenizer,
    train_prompts,
    COMPLETION_CHARS,
    num_samples=K,
    stop=None,
    generator=torch.Generator().manual_seed(0),
)
groups = [samples.responses[i * K : (i + 1) * K] for i in range(len(train_prompts))]
preference_triples = []  # (prompt, chosen, rejected)
for prompt, group in zip(train_prompts, groups, strict=True):
    ranked = sorted(group, key=plain_speech_reward, reverse=True)
    preference_triples += [
        (prompt, better, worse)
        for better, worse in la.ranking_to_pairs(ranked)
        if plain_speech_reward(better) > plain_speech_reward(worse)
    ]
print(
    f"{len(train_prompts) * K} samples -> {len(preference_triples)} preference pairs "
    f"(of {len(train_prompts) * la.num_comparison_pairs(K)} before dropping ties)"
)
p_, w_, l_ = preference_triples[0]
print(
    f"prompt {p_!r}\n  chosen   {w_!r} ({plain_speech_reward(w_):.0f} words)\n"
    f"  rejected {l_!r} ({plain_speech_reward(l_):.0f} words)"
)

# %% [markdown]
# **Training a reward model.** Now pretend the labeller is gone and only its comparisons are
# left. A `RewardModel` (a copy of the base GPT plus a scalar head) learns to predict them
# with the Bradley-Terry loss. We hold out the pairs of the last 32 prompts and report the
# share of held-out pairs it orders correctly.

# %% tags=["demo"] mystnb={"image": {"alt": "Left: Bradley-Terry training loss of the reward model falling from about 0.7 over 80 steps, with held-out pair accuracy. Right: reward model score against the true number of words for held-out continuations, rising together."}}
torch.manual_seed(0)
reward_model = la.RewardModel(copy.deepcopy(base).requires_grad_(True))
held_out_prompts = set(train_prompts[-32:])
rm_train = [t for t in preference_triples if t[0] not in held_out_prompts]
rm_test = [t for t in preference_triples if t[0] in held_out_prompts]


def rm_scores(triples: list[tuple[str, str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Reward-model scores (N,) of the chosen and of the rejected prompt + continuation."""
    texts = [p + w for p, w, _ in triples] + [p + r for p, _, r in triples]
    ids, mask = la.pad_right([tokenizer.encode(t) for t in texts])
    scores = reward_model(ids, mask)
    return scores[: len(triples)], scores[len(triples) :]


optimizer = torch.optim.AdamW(reward_model.parameters(), lr=3e-4, weight_decay=0.0)
rng = random.Random(0)
rm_losses, rm_accs = [], []
for step in range(80):
    reward_model.train()
    chosen_r, rejected_r = rm_scores(rng.sample(rm_train, 32))
    loss = la.bradley_terry_loss(chosen_r, rejected_r)
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"reward-model loss became {loss.item()} at step {step}")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    rm_losses.append(loss.item())
    if step % 10 == 9:
        reward_model.eval()
        with torch.no_grad():
            rm_accs.append((step + 1, la.preference_accuracy(*rm_scores(rm_test))))
print(f"held-out pair accuracy: {rm_accs[-1][1]:.1%} on {len(rm_test)} pairs")
glue("rm_accuracy", f"{rm_accs[-1][1]:.0%}")
glue("rm_pairs", f"{len(rm_train)}")

test_texts = [
    p + r for i, p in enumerate(train_prompts[-32:]) for r in groups[len(train_prompts) - 32 + i]
]
true_words = [plain_speech_reward(t[24:]) for t in test_texts]
predicted = reward_model.score(test_texts, tokenizer)
rm_corr = float(np.corrcoef(true_words, predicted)[0, 1])
glue("rm_corr", f"{rm_corr:.2f}")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
ax1.plot(rm_losses, alpha=0.6, label="training loss (batch of 32 pairs)")
ax1.axhline(math.log(2), color="gray", ls=":", label="log 2 (chance)")
ax1b = ax1.twinx()
ax1b.plot(*zip(*rm_accs, strict=True), "o-", color="tab:green", label="held-out accuracy")
ax1b.set(ylim=(0.4, 1.0), ylabel="held-out pair accuracy")
ax1.set(xlabel="step", ylabel="Bradley-Terry loss", title="reward model training")
ax1.legend(loc="lower left", fontsize=8)
ax1b.legend(loc="upper right", fontsize=8)
jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(true_words))
ax2.scatter(np.array(true_words) + jitter, predicted, s=10)
ax2.set(
    xlabel="true reward (words in the continuation)",
    ylabel="reward-model score",
    title=f"held-out continuations (correlation {rm_corr:.2f})",
)
plt.tight_layout()
plt.show()


# %% [markdown]
# Trained on {glue:text}`rm_pairs` pairs, the reward model orders {glue:text}`rm_accuracy` of
# the held-out pairs correctly, and its scores correlate at {glue:text}`rm_corr` with the
# true word count. It learned the preference well but not perfectly; a real reward model is
# far less accurate (InstructGPT's agreed with held-out labellers about 70% of the time
# {cite}`ouyang2022instructgpt`), and every error is a place where the policy can gain
# reward without gaining quality. In the experiments below we optimise the *programmatic* reward directly, so that we can
# measure exactly what the alignment methods do; the failure we will see would only be
# easier to trigger with a learned, imperfect reward {cite}`gao2023scaling`.
#
# ## 3. RLHF: maximise reward, stay close to the reference
#
# With a reward $r(x, y)$, RLHF fine-tunes the policy $\pi_\theta$ (initialised from the SFT
# model, which also serves as the frozen reference $\pi_{\text{ref}}$) to maximise
#
# $$ J(\theta) = \mathbb{E}_{x \sim \mathcal{D},\, y \sim \pi_\theta(\cdot \mid x)}
#    \bigl[r(x, y)\bigr] - \beta\, \mathrm{KL}\bigl(\pi_\theta(\cdot \mid x) \,\|\,
#    \pi_{\text{ref}}(\cdot \mid x)\bigr). $$
#
# The KL term keeps the policy near the reference: it preserves what pretraining and SFT
# taught (fluency, knowledge), and it stops the policy from drifting into regions where the
# reward model was never trained and its scores are meaningless. In practice the KL is
# applied **per token**: every generated token gets the reward
# $-\beta\,(\log\pi_\theta(y_t) - \log\pi_{\text{ref}}(y_t))$ and the last token also gets
# $r(x, y)$ {cite}`ziegler2019finetuning,stiennon2020summarize`.
#
# Sampling a token is not differentiable, but the expected reward still has a gradient: the
# **policy-gradient** theorem gives
# $\nabla_\theta\, \mathbb{E}[R] = \mathbb{E}\bigl[\sum_t A_t\, \nabla_\theta \log
# \pi_\theta(y_t \mid s_t)\bigr]$, where the *advantage* $A_t$ says how much better than
# expected the rest of the sequence turned out after choosing $y_t$. RLHF optimises this
# estimator; it does not differentiate through the sampling.
#
# ### PPO's clipped surrogate
#
# Proximal policy optimisation {cite}`schulman2017ppo` reuses each batch of samples for
# several gradient steps. With the probability ratio between the current policy and the one
# that generated the samples, $\rho_t = \pi_\theta(y_t \mid s_t) / \pi_{\text{old}}(y_t \mid
# s_t) = \exp(\log\pi_\theta - \log\pi_{\text{old}})$, it maximises
#
# $$ L^{\text{CLIP}} = \mathbb{E}_t\Bigl[\min\bigl(\rho_t A_t,\;
#    \operatorname{clip}(\rho_t, 1 - \epsilon, 1 + \epsilon)\, A_t\bigr)\Bigr]. $$
#
# The `min` makes the objective pessimistic: once the ratio has moved more than $\epsilon$
# (typically 0.2) in the direction the advantage favours, the clipped term is the smaller one,
# it is constant in $\theta$, and the gradient vanishes. One batch can therefore not push the
# policy far. Moving *against* the advantage is never clipped away. As a loss to minimise we
# take the negative, averaged over the response tokens only.
#
# ### Exercise 3: the clipped surrogate loss
#
# Write `ppo_clip_loss(logp, old_logp, advantages, mask, clip_range=0.2)`: all inputs have
# shape `(B, T)`; `mask` is `True` on response tokens. Return
# $-\,\text{mean}_{\text{mask}} \min(\rho A, \operatorname{clip}(\rho, 1-\epsilon, 1+\epsilon) A)$
# as a 0-dim tensor. At $\rho = 1$ the loss is minus the mean advantage; with $A = 1$ and
# $\rho = 1.5$ the clipped value $1.2$ counts, so the loss is $-1.2$.

# %% nbgrader={"grade": false, "grade_id": "ppo_clip", "locked": false, "schema_version": 3, "solution": true, "task": false}
def ppo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
) -> torch.Tensor:
    """PPO clipped surrogate loss (to minimise), mean over masked positions; inputs (B, T)."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %% nbgrader={"grade": true, "grade_id": "ppo_clip_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
ones_ = torch.ones(1, 1, dtype=torch.bool)
check_close(
    ppo_clip_loss(torch.log(torch.tensor([[1.5]])), torch.zeros(1, 1), torch.ones(1, 1), ones_),
    -1.2,
    "loss for ratio 1.5, advantage +1 (the clip at 1 + 0.2 applies)",
    hints={"no clipping": -1.5, "forgot the minus sign (returned the objective)": 1.2},
)
check_close(
    ppo_clip_loss(torch.log(torch.tensor([[0.5]])), torch.zeros(1, 1), torch.ones(1, 1), ones_),
    -0.5,
    "loss for ratio 0.5, advantage +1 (min keeps the unclipped, smaller term)",
    hints={"clipped both sides (used clip instead of min)": -0.8},
)
check_close(
    ppo_clip_loss(torch.log(torch.tensor([[0.5]])), torch.zeros(1, 1), -torch.ones(1, 1), ones_),
    0.8,
    "loss for ratio 0.5, advantage -1 (the clip at 1 - 0.2 applies)",
)
adv_ = torch.tensor([[1.0, -2.0, 5.0]])
check_close(
    ppo_clip_loss(torch.zeros(1, 3), torch.zeros(1, 3), adv_, torch.tensor([[True, True, False]])),
    0.5,
    "loss at ratio 1 with the third position masked out",
    hints={"averaged over all positions, ignoring the mask": -4.0 / 3},
)


# %% [markdown]
# ### Advantages: GAE
#
# The advantage needs a baseline: how much reward was *expected* from state $s_t$. PPO learns
# it with a **value head** $V(s_t)$ on the policy's hidden states. The one-step
# temporal-difference error $\delta_t = r_t + \gamma V(s_{t+1}) - V(s_t)$ is a low-variance but
# biased advantage (it trusts $V$); the Monte-Carlo return minus $V(s_t)$ is unbiased but
# noisy. **Generalised advantage estimation** {cite}`schulman2016gae` interpolates with a
# parameter $\lambda \in [0, 1]$:
#
# $$ A_t = \sum_{l \ge 0} (\gamma\lambda)^l\, \delta_{t+l}
#    \quad\Longleftrightarrow\quad A_t = \delta_t + \gamma\lambda\, A_{t+1}, $$
#
# computed backwards from the last token, with $V = 0$ after the end of the response.
# $\lambda = 0$ gives $A_t = \delta_t$; $\lambda = 1$ gives the return minus $V(s_t)$. The
# value head is trained towards the returns $A_t + V(s_t)$. RLHF usually takes $\gamma = 1$
# and $\lambda = 0.95$.
#
# Worked example: rewards $(0, 0, 1)$, values $(0.5, 0.5, 0.5)$, $\gamma = 1$,
# $\lambda = 0.5$. Then $\delta = (0, 0, 0.5)$ and, backwards,
# $A_3 = 0.5$, $A_2 = 0 + 0.5 \cdot 0.5 = 0.25$, $A_1 = 0 + 0.5 \cdot 0.25 = 0.125$.
#
# ### Exercise 4 (worked numbers): GAE for one response
#
# Write `gae_advantages(rewards, values, gamma, lam)` for one response: `rewards` and
# `values` are lists of floats of equal length $T$; return the list of $T$ advantages.

# %% nbgrader={"grade": false, "grade_id": "gae", "locked": false, "schema_version": 3, "solution": true, "task": false}
def gae_advantages(
    rewards: list[float], values: list[float], gamma: float = 1.0, lam: float = 0.95
) -> list[float]:
    """Generalised advantage estimates of one trajectory (the value after its end is 0)."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %% nbgrader={"grade": true, "grade_id": "gae_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
check_close(
    gae_advantages([0.0, 0.0, 1.0], [0.5, 0.5, 0.5], gamma=1.0, lam=0.5),
    [0.125, 0.25, 0.5],
    "GAE of the worked example",
    hints={
        "one-step TD errors only (lambda ignored)": [0.0, 0.0, 0.5],
        "returns instead of advantages (forgot to subtract V)": [0.625, 0.75, 1.0],
    },
)
check_close(
    gae_advantages([1.0, 2.0], [0.0, 0.0], gamma=1.0, lam=1.0),
    [3.0, 2.0],
    "lambda = 1 and V = 0: advantages are the returns-to-go",
)


# %% [markdown]
# ### Four models in memory
#
# PPO-based RLHF keeps **four** networks: the **policy** being trained, the frozen
# **reference** (for the KL), the **reward** model, and the **value** model (the critic that
# supplies $V$). Each is typically as large as the policy, which is why PPO is expensive and
# why the library attaches the value function as a small head on the policy's own hidden
# states (`PolicyWithValue`), a common way to save memory. One `PPOTrainer.step`:
#
# ```text
#  prompts --> policy samples responses --> reward r(x, y) for each
#          --> per-token rewards: -beta * (log pi - log pi_ref), + r at the last token
#          --> values V(s_t) from the value head --> GAE advantages (whitened per batch)
#          --> a few epochs of: clipped surrogate + value loss, gradient step
# ```
#
# ## 4. DPO: the reward model was inside the policy all along
#
# The KL-regularised objective of section 3 has a closed-form maximiser
# {cite}`rafailov2023dpo`: for every prompt,
#
# $$ \pi^*(y \mid x) = \frac{1}{Z(x)}\, \pi_{\text{ref}}(y \mid x)\,
#    \exp\bigl(r(x, y) / \beta\bigr), $$
#
# the reference reweighted by the exponentiated reward, with $Z(x)$ normalising. Solve it for
# the reward:
#
# $$ r(x, y) = \beta \log \frac{\pi^*(y \mid x)}{\pi_{\text{ref}}(y \mid x)} + \beta \log Z(x). $$
#
# $Z(x)$ is intractable, but the Bradley-Terry model only looks at *differences* of rewards
# for the same prompt, and there it cancels. Substituting the policy for $\pi^*$ turns the
# reward-model loss into a loss on the policy itself, **direct preference optimisation**:
#
# $$ \mathcal{L}_{\text{DPO}} = -\,\mathbb{E}\Bigl[\log\sigma\Bigl(
#    \beta \log\frac{\pi_\theta(y_w \mid x)}{\pi_{\text{ref}}(y_w \mid x)}
#    - \beta \log\frac{\pi_\theta(y_l \mid x)}{\pi_{\text{ref}}(y_l \mid x)}\Bigr)\Bigr]. $$
#
# The quantity $\hat r_\theta(x, y) = \beta \log \pi_\theta(y \mid x)/\pi_{\text{ref}}(y \mid x)$
# is DPO's *implicit reward*. No reward model is trained, nothing is sampled during training,
# and the loss is a classification loss on a fixed dataset: just two forward passes (policy
# and reference) per response. The reference has not gone away: $\beta$ still sets how far
# the policy may move from it. The log-probabilities are of whole responses: the sum of the
# log-probabilities of the response tokens, prompt excluded.
#
# ### Exercise 5 (worked numbers): the DPO loss
#
# Write `dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1)` for
# tensors `(B,)` of sequence log-probabilities, returning the mean loss (0-dim). With
# $\beta = 0.1$, $\log\pi(y_w) = -10$, $\log\pi(y_l) = -12$ and reference log-probs $-11$ for
# both, the implicit rewards are $0.1$ and $-0.1$, the margin $0.2$, and the loss
# $-\log\sigma(0.2) = 0.598$.

# %% nbgrader={"grade": false, "grade_id": "dpo_loss", "locked": false, "schema_version": 3, "solution": true, "task": false}
def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """Mean DPO loss of sequence log-probs (B,) each: -log sigmoid(beta * log-ratio margin)."""
    # YOUR CODE HERE
    raise NotImplementedError()


# %% nbgrader={"grade": true, "grade_id": "dpo_loss_test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values)


check_close(
    dpo_loss(_t(-10.0), _t(-12.0), _t(-11.0), _t(-11.0), beta=0.1),
    0.598,
    "DPO loss of the worked example (beta 0.1, -10 / -12, reference -11)",
    atol=5e-4,
    hints={
        "forgot beta": -math.log(1 / (1 + math.exp(-2.0))),
        "chosen and rejected swapped": -math.log(1 / (1 + math.exp(0.2))),
        "reference log-probs added instead of subtracted": -math.log(1 / (1 + math.exp(-0.2))),
    },
)
check_close(
    dpo_loss(_t(-5.0, -7.0), _t(-5.0, -7.0), _t(-6.0, -1.0), _t(-6.0, -1.0)),
    math.log(2),
    "loss when policy and reference agree on both responses (margin 0: log 2)",
)

# %% [markdown]
# Where does the DPO gradient push? With $\hat r$ the implicit reward,
#
# $$ \nabla_\theta \mathcal{L}_{\text{DPO}} = -\beta\,\mathbb{E}\bigl[
#    \sigma(\hat r_\theta(x, y_l) - \hat r_\theta(x, y_w))\,
#    \bigl(\nabla_\theta \log\pi_\theta(y_w \mid x) - \nabla_\theta \log\pi_\theta(y_l \mid x)\bigr)\bigr]: $$
#
# raise the chosen response, lower the rejected one, and weigh each pair by how wrong the
# implicit reward model currently is about it. Pairs it already orders correctly by a wide
# margin barely count.
#
# ## 5. Aligning the Shakespeare GPT: DPO against PPO
#
# **DPO.** The data are the pairs collected in section 2; to keep the run short we use, for
# every prompt, only the best and the worst of its four samples (one pair per prompt, as many
# DPO datasets do). The policy starts as a copy of the base model, which is also the frozen
# reference. Every few steps we measure reward and KL on the held-out prompts.
#
# In the InstructGPT recipe the starting point, the KL reference and the opponent in
# win-rates is the *SFT* model. Our task needs no instruction format (the prompts are line
# openings from the corpus and the model simply continues them), so there is no separate SFT
# stage: the pretrained base model plays the SFT model's role in everything below.

# %% tags=["demo"]
dpo_pairs = []
for prompt, group in zip(train_prompts, groups, strict=True):
    ranked = sorted(group, key=plain_speech_reward, reverse=True)
    if plain_speech_reward(ranked[0]) > plain_speech_reward(ranked[-1]):
        dpo_pairs.append((prompt, ranked[0], ranked[-1]))

torch.manual_seed(0)
dpo_policy = copy.deepcopy(base).requires_grad_(True)
dpo_optimizer = torch.optim.AdamW(dpo_policy.parameters(), lr=1e-4, weight_decay=0.0)
rng = random.Random(0)
dpo_curve = [(0, base_eval["reward"], base_eval["kl"])]  # (step, reward, KL) on held-out prompts
dpo_log = []  # (step, loss, training accuracy)
dpo_start, step = time.perf_counter(), 0
for _epoch in range(2):
    rng.shuffle(dpo_pairs)
    for i in range(0, len(dpo_pairs) - 15, 16):
        batch = la.build_preference_batch(dpo_pairs[i : i + 16], tokenizer, template=False)
        dpo_policy.train()
        out = la.preference_loss(dpo_policy, batch, base, loss_type="dpo", beta=0.1)
        if not math.isfinite(out.loss.item()):
            raise FloatingPointError(f"DPO loss became {out.loss.item()} at step {step}")
        dpo_optimizer.zero_grad()
        out.loss.backward()
        dpo_optimizer.step()
        step += 1
        dpo_log.append((step, out.loss.item(), out.accuracy))
        if step % 4 == 0:
            ev = evaluate(dpo_policy, test_prompts[:32])
            dpo_curve.append((step, ev["reward"], ev["kl"]))
            print(
                f"step {step:3d}  loss {out.loss.item():.3f}  train acc {out.accuracy:.2f}  "
                f"held-out reward {ev['reward']:.2f}  KL {ev['kl']:5.1f}"
            )
print(f"{len(dpo_pairs)} pairs, {step} steps in {time.perf_counter() - dpo_start:.1f} s")
glue("dpo_pairs", f"{len(dpo_pairs)}")
glue("dpo_steps", f"{step}")


# %% [markdown]
# **PPO.** The same starting point, the programmatic reward scored on the sampled
# continuation, 16 prompts per step, 4 PPO epochs per batch, $\beta = 0.1$ per token. We run
# it twice: once with the KL penalty, once without it ($\beta = 0$).

# %% tags=["demo"]
def run_ppo(kl_coef: float, steps: int = 30, seed: int = 0) -> tuple[torch.nn.Module, list, list]:
    """PPO on the plain-speech reward; returns the policy, held-out (step, reward, KL), stats."""
    torch.manual_seed(seed)
    policy = copy.deepcopy(base).requires_grad_(True)
    config = la.PPOConfig(
        kl_coef=kl_coef, lr=1e-4, ppo_epochs=4, max_new_tokens=COMPLETION_CHARS, stop=None
    )
    trainer = la.PPOTrainer(
        policy,
        tokenizer,
        plain_speech_reward,
        config,
        reference=base,
        generator=torch.Generator().manual_seed(seed),
    )
    prompt_rng = random.Random(seed)
    curve, stats = [(0, base_eval["reward"], base_eval["kl"])], []
    for step in range(1, steps + 1):
        out = trainer.step(prompt_rng.sample(train_prompts, 16))
        if not all(math.isfinite(v) for v in out.stats.values()):
            raise FloatingPointError(
                f"PPO statistics became non-finite at step {step}: {out.stats}"
            )
        stats.append(out.stats)
        if step % 5 == 0:
            ev = evaluate(policy, test_prompts[:32])
            curve.append((step, ev["reward"], ev["kl"]))
            print(
                f"beta {kl_coef}: step {step:2d}  batch reward {out.stats['reward']:5.2f}  batch KL "
                f"{out.stats['kl']:6.1f}  held-out reward {ev['reward']:5.2f}  KL {ev['kl']:6.1f}"
            )
    return policy, curve, stats


ppo_start = time.perf_counter()
ppo_policy, ppo_curve, ppo_stats = run_ppo(kl_coef=0.1)
print(f"PPO with the KL penalty: {time.perf_counter() - ppo_start:.1f} s\n")
hack_start = time.perf_counter()
hack_policy, hack_curve, hack_stats = run_ppo(kl_coef=0.0)
print(f"PPO without it: {time.perf_counter() - hack_start:.1f} s")

# %% [markdown]
# **Best-of-n** is the baseline every RL method should beat: sample $n$ continuations and keep
# the one with the highest reward. It needs no training at all, costs $n$ times the
# generation, and its KL from the model it samples from is at most
# $\log n - (n - 1)/n$ nats {cite}`beirami2024bestofn`. The same procedure applied to a
# dataset of prompts, keeping the winners as new SFT data, is **rejection sampling
# fine-tuning**, used for instance in the alignment of Llama 2 {cite}`touvron2023llama2`.

# %% tags=["demo"]
best_of = {}
for n in (2, 4, 8):
    results = la.best_of_n(
        base,
        tokenizer,
        test_prompts[:32],
        plain_speech_reward,
        n=n,
        max_new_tokens=COMPLETION_CHARS,
        stop=None,
        generator=torch.Generator().manual_seed(7),
    )
    best_of[n] = (float(np.mean([r.best_reward for r in results])), la.best_of_n_kl_bound(n))
    print(f"best-of-{n}: reward {best_of[n][0]:.2f}, KL at most {best_of[n][1]:.2f} nats")
glue("bon4_reward", f"{best_of[4][0]:.2f}")
glue("bon4_kl", f"{best_of[4][1]:.2f}")

# %% [markdown]
# ### Reward against KL
#
# Each point below is one model evaluated on the held-out prompts: its mean reward and how far
# (in KL) it moved from the base model to get it. A good method climbs steeply: much reward
# for little KL.

# %% tags=["demo"] mystnb={"image": {"alt": "Mean held-out reward against KL from the base model in nats. DPO and PPO with the KL penalty climb from the base model's reward to a higher reward at moderate KL; best-of-n points sit at very small KL; PPO without the KL penalty reaches the highest reward at a KL many times larger."}}
fig, ax = plt.subplots(figsize=(7.5, 4.2))
for name, curve, style in (
    ("DPO (beta 0.1)", dpo_curve, "o-"),
    ("PPO (beta 0.1)", ppo_curve, "s-"),
    ("PPO without KL penalty (beta 0)", hack_curve, "x--"),
):
    _, rewards_, kls_ = zip(*curve, strict=True)
    ax.plot(kls_, rewards_, style, label=name)
    ax.annotate(
        f"step {curve[-1][0]}",
        (kls_[-1], rewards_[-1]),
        fontsize=8,
        xytext=(4, -10),
        textcoords="offset points",
    )
ax.plot(
    [best_of[n][1] for n in best_of],
    [best_of[n][0] for n in best_of],
    "k^",
    label="best-of-n (n = 2, 4, 8; KL bound)",
)
ax.axhline(base_eval["reward"], color="gray", ls=":", label="base model")
ax.set(
    xlabel="KL(policy || base) on held-out prompts, nats per completion",
    ylabel="mean reward (words in 40 characters)",
    title="reward against KL from the reference",
    xscale="symlog",
)
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ### Win-rates and samples
#
# The standard summary of an aligned model is its **win-rate** against the reference: on
# held-out prompts, sample one answer from each model and let the judge (here the
# programmatic reward; in practice humans or a strong LLM) say which is better. Ties count
# one half.

# %% tags=["demo"]
final = {"base": evaluate(base, test_prompts, seed=99)}
for name, model in (("DPO", dpo_policy), ("PPO", ppo_policy), ("PPO, beta 0", hack_policy)):
    final[name] = evaluate(model, test_prompts, seed=99)


def win_rate(rewards: list[float], reference: list[float]) -> float:
    """Share of prompts where ``rewards`` beats ``reference`` (ties count 1/2)."""
    return float(
        np.mean(
            [
                1.0 if a > b else 0.5 if a == b else 0.0
                for a, b in zip(rewards, reference, strict=True)
            ]
        )
    )


print(f"{'model':14s} {'reward':>7s} {'KL (nats)':>10s} {'win-rate vs base':>17s}")
for name, ev in final.items():
    rate = win_rate(ev["rewards"], final["base"]["rewards"])
    print(f"{name:14s} {ev['reward']:7.2f} {ev['kl']:10.1f} {rate:17.0%}")
    key = {"base": "base", "DPO": "dpo", "PPO": "ppo", "PPO, beta 0": "hack"}[name]
    glue(f"final_reward_{key}", f"{ev['reward']:.2f}")
    glue(f"final_kl_{key}", f"{ev['kl']:.1f}")
    glue(f"win_{key}", f"{rate:.0%}")

print()
for i in range(3):
    print(f"prompt: {test_prompts[i]!r}")
    for name, ev in final.items():
        print(f"  {name:12s} {ev['responses'][i]!r}  ({ev['rewards'][i]:.0f} words)")

# %% [markdown]
# On the {glue:text}`final_reward_base`-word base model, DPO reaches
# {glue:text}`final_reward_dpo` words at a KL of {glue:text}`final_kl_dpo` nats and wins
# {glue:text}`win_dpo` of the held-out comparisons; PPO with the KL penalty reaches
# {glue:text}`final_reward_ppo` words at {glue:text}`final_kl_ppo` nats and wins
# {glue:text}`win_ppo`. (DPO used {glue:text}`dpo_pairs` fixed pairs and
# {glue:text}`dpo_steps` gradient steps; PPO sampled fresh continuations at every step.)
# Best-of-4 gets {glue:text}`bon4_reward` words for at most {glue:text}`bon4_kl` nats: on
# this easy reward, simply sampling more is a strong competitor, which is why serious
# comparisons of alignment methods always plot reward against KL instead of quoting reward
# alone.
#
# Read the samples too. The penalised models already bend the language towards the proxy:
# more one- and two-letter words, a few invented ones. A KL of about 30 nats over 40
# characters is a large move for a model this small, and a larger $\beta$ (or fewer steps)
# would buy cleaner text for less reward. Where to stop on the reward-KL curve is a judgement
# about the *true* goal, which the proxy cannot make for you.
#
# ### Reward hacking
#
# Without the KL penalty, PPO reaches the highest reward of all,
# {glue:text}`final_reward_hack` words per 40 characters, and wins {glue:text}`win_hack` of
# its comparisons. Read its samples: it gets there by repeating the cheapest rewarded token,
# the one-letter word "I", which our labeller counts every time and no reader would call plain
# speech. Its KL from the
# base model, {glue:text}`final_kl_hack` nats, shows how far it left the language the base
# model speaks. This is **reward hacking** (or reward over-optimisation): the policy finds
# the cheapest way to raise the *proxy*, and the proxy stops measuring what it was meant to.
# The win-rate does not catch it, because the judge is the same proxy.

# %% tags=["demo"] mystnb={"image": {"alt": "Two panels over 30 PPO steps. Left: batch reward for PPO with and without the KL penalty; the run without it climbs higher. Right: KL from the base model on a log scale; without the penalty it grows steadily to far larger values, with it it stays much lower."}}
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
for name, stats, style in (
    ("beta 0.1", ppo_stats, "-"),
    ("beta 0 (no KL penalty)", hack_stats, "--"),
):
    ax1.plot([s["reward"] for s in stats], style, label=name)
    ax2.plot([max(s["kl"], 1e-2) for s in stats], style, label=name)
ax1.set(xlabel="PPO step", ylabel="mean reward of the batch", title="reward")
ax2.set(xlabel="PPO step", ylabel="KL from the base model (nats)", title="KL", yscale="log")
ax1.legend(fontsize=8)
ax2.legend(fontsize=8)
plt.tight_layout()
plt.show()
hack_growth = hack_stats[-1]["kl"] / max(ppo_stats[-1]["kl"], 1e-6)
glue("hack_kl_ratio", f"{hack_growth:.1f}")

# %% [markdown]
# At the last step the batch KL of the unpenalised run is {glue:text}`hack_kl_ratio` times
# that of the penalised one. With a *learned* reward model the same thing happens sooner
# and more quietly: the policy finds inputs on which the reward model is wrong, and the
# reward it reports keeps rising while true quality falls {cite}`gao2023scaling`. The
# defences are the ones used here and in practice: a KL penalty (or DPO's $\beta$),
# early stopping on held-out judgements by a different judge, and, above all, reading samples.
#
# ## 6. Variants of DPO
#
# DPO's success produced a family of offline preference losses. All take sequence
# log-probabilities; they differ in what they compare and in the shape of the loss.
# Write $h_\theta = \log\frac{\pi_\theta(y_w)}{\pi_{\text{ref}}(y_w)} -
# \log\frac{\pi_\theta(y_l)}{\pi_{\text{ref}}(y_l)}$ for DPO's log-ratio margin.
#
# - **IPO** {cite}`azar2024ipo` replaces the log-sigmoid by a squared loss with a target,
#   $\mathcal{L}_{\text{IPO}} = \bigl(h_\theta - \tfrac{1}{2\tau}\bigr)^2$. *What it fixes:* when
#   a pair's preference is (close to) deterministic, DPO's loss keeps decreasing as
#   $h_\theta \to \infty$, so the policy can be pushed arbitrarily far from the reference
#   whatever $\beta$ is; the KL regularisation becomes ineffective and DPO overfits. IPO stops
#   at a finite margin $1/(2\tau)$, so the regularisation keeps working and training can run
#   to convergence.
# - **KTO** {cite}`ethayarajh2024kto` learns from **unpaired, binary** feedback: each example
#   is one response with a thumbs-up or a thumbs-down, no partner. With
#   $r_\theta = \log\frac{\pi_\theta(y)}{\pi_{\text{ref}}(y)}$ and a reference point $z_0$ (an
#   estimate of the policy's KL from the reference), a desirable example has loss
#   $w_D\,(1 - \sigma(\beta(r_\theta - z_0)))$ and an undesirable one
#   $w_U\,(1 - \sigma(\beta(z_0 - r_\theta)))$, a value function shaped after Kahneman and
#   Tversky's prospect theory (losses and gains weighed differently). It is an **offline loss
#   like DPO**, computed on a fixed dataset, not a reinforcement-learning algorithm. *What it
#   fixes:* paired comparisons are expensive; thumbs-up/down signals are abundant (logs of a
#   deployed system).
# - **ORPO** {cite}`hong2024orpo` removes the reference model *and* the separate SFT stage.
#   With the length-normalised likelihood $P_\theta(y \mid x) = \exp\bigl(\tfrac{1}{|y|}
#   \sum_t \log\pi_\theta(y_t \mid \cdot)\bigr)$ and its odds
#   $\operatorname{odds}_\theta(y) = P_\theta(y)/(1 - P_\theta(y))$,
#   $$ \mathcal{L}_{\text{ORPO}} = \underbrace{-\tfrac{1}{|y_w|}\log\pi_\theta(y_w \mid x)}_{\text{SFT on the chosen response}}
#      \;-\; \lambda \log\sigma\Bigl(\log\frac{\operatorname{odds}_\theta(y_w \mid x)}{\operatorname{odds}_\theta(y_l \mid x)}\Bigr). $$
#   *What it fixes:* SFT alone raises the probability of the rejected style too (it is similar
#   text); the odds-ratio term pushes it down during SFT itself, in one stage and with one
#   model in memory.
# - **SimPO** {cite}`meng2024simpo` also drops the reference: its implicit reward is the
#   **average** log-probability per token, and it asks for a margin $\gamma$:
#   $\mathcal{L}_{\text{SimPO}} = -\log\sigma\bigl(\tfrac{\beta}{|y_w|}\log\pi_\theta(y_w)
#   - \tfrac{\beta}{|y_l|}\log\pi_\theta(y_l) - \gamma\bigr)$. *What it fixes:* DPO's summed
#   log-probabilities favour long responses (and are not what the model uses when it
#   generates); normalising by length aligns the training reward with generation and removes
#   that length bias, and no reference model means half the memory.
#
# All five losses are in the library (`la.dpo_loss`, `la.ipo_loss`, `la.kto_loss`,
# `la.orpo_loss`, `la.simpo_loss`). On the worked example of exercise 5, with both responses
# 20 tokens long:

# %%
pw_, pl_, rw_, rl_ = (torch.tensor([v]) for v in (-10.0, -12.0, -11.0, -11.0))
lengths_ = torch.tensor([20.0])
variant_losses = {
    "DPO (beta 0.1)": la.dpo_loss(pw_, pl_, rw_, rl_, beta=0.1).loss,
    "IPO (tau 0.1: target margin 5)": la.ipo_loss(pw_, pl_, rw_, rl_, beta=0.1).loss,
    "SimPO (beta 2, gamma 1)": la.simpo_loss(
        pw_, pl_, lengths_, lengths_, beta=2.0, gamma=1.0
    ).loss,
    "ORPO (lambda 0.1)": la.orpo_loss(pw_, pl_, lengths_, lengths_, lam=0.1).loss,
    "KTO, chosen as desirable (z0 = 0)": la.kto_loss(
        pw_, rw_, torch.tensor([True]), beta=0.1, reference_point=0.0
    ).loss,
}
for name, value in variant_losses.items():
    print(f"{name:36s} {value.item():.4f}")


# %% [markdown]
# The numbers are not comparable across losses (their scales differ); what matters is what
# each one rewards. IPO's is large because a margin of 2 is far below its target of 5; SimPO's
# margin of $2 \cdot (-0.5 + 0.6) = 0.2$ is below its $\gamma = 1$; ORPO's is mostly the SFT
# term, the per-token NLL $0.5$ of the chosen response.
#
# ## 7. The same loss on real GPT-2 weights
#
# Nothing in `preference_loss` depends on the model's size or tokenizer. The next cell loads
# the 124-million-parameter GPT-2 {cite}`radford2019gpt2` into the course's `GPT` class, takes
# a frozen copy as the reference, tokenizes two preference pairs with the course's GPT-2
# byte-level BPE, and takes a few DPO steps. At step 0 policy and reference are the same model,
# so every log-ratio is 0 and the loss is exactly $\log 2 \approx 0.693$; after that the
# implicit reward margin $\beta(\log\text{ratio}_w - \log\text{ratio}_l)$ grows. It needs the
# weights (about 500 MB), so it runs only when they are cached or the Hugging Face Hub can be
# reached; otherwise it prints why and moves on.

# %% tags=["demo"]
def dpo_steps_on_gpt2(hf_model, steps: int = 4, beta: float = 0.1, lr: float = 1e-5) -> list[float]:
    """A few DPO steps on a Hugging Face GPT2LMHeadModel (converted to the course GPT)."""
    from llmcourse.data import fetch
    from llmcourse.models.gpt import GPT
    from llmcourse.tokenizers import ByteLevelBPE

    bpe = ByteLevelBPE.from_gpt2_files(fetch("gpt2_encoder"), fetch("gpt2_vocab"))
    policy = GPT.from_hf_gpt2(hf_model).train()
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    pairs = [  # (prompt, chosen, rejected)
        ("Review: the film was", " warm, funny and moving.", " a dull mess that dragged on."),
        (
            "Review: the service was",
            " quick, friendly and kind.",
            " slow, and the staff were rude.",
        ),
    ]
    batch = la.build_preference_batch(pairs, bpe, template=False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        out = la.preference_loss(policy, batch, reference, loss_type="dpo", beta=beta)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        margin = (out.chosen_rewards - out.rejected_rewards).mean().item()
        print(f"step {step}: DPO loss {out.loss.item():.4f}, implicit reward margin {margin:+.4f}")
        losses.append(out.loss.item())
    return losses


hf_gpt2, reason = load_hf_gpt2()  # never raises: (None, why) when offline
if hf_gpt2 is None:
    print(f"Skipping the GPT-2 demo: {reason}.")
else:
    dpo_steps_on_gpt2(hf_gpt2)

# %% [markdown]
# ```{admonition} Common misconceptions
# :class: warning
#
# - **"KTO is a variant of PPO."** KTO is an *offline* loss on a fixed dataset, like DPO; it
#   involves no sampling, no value function and no policy-gradient updates. What sets it apart
#   is its data: **unpaired, binary** labels (this response is good / bad), not pairs.
# - **"RLHF with PPO needs three models."** It keeps **four**: the policy, the frozen
#   reference (for the KL penalty), the reward model and the value model (critic). The value
#   model can share the policy's trunk as a head, as in the library, but it is a fourth set
#   of outputs to train.
# - **"Labellers compare two answers."** InstructGPT's labellers *ranked* $K$ answers per
#   prompt ($K$ from 4 to 9), which yields $\binom{K}{2}$ comparison pairs: 6 for $K = 4$,
#   36 for $K = 9$ (exercise 1).
# - **"The RL objective is not differentiable, so RLHF cannot use gradients."** Sampling is
#   not differentiable, but the expected reward has a gradient, estimated by the
#   policy-gradient theorem ($\mathbb{E}[A_t \nabla\log\pi]$); PPO follows that estimate with
#   ordinary backpropagation through $\log\pi$. DPO is not "differentiable where RLHF is not":
#   it optimises the same KL-regularised objective through a different, supervised loss.
# - **"DPO has no KL constraint / no reference model."** DPO's $\beta$ and its reference model
#   are exactly the KL-regularisation of RLHF; the reference is needed for every log-ratio.
#   SimPO and ORPO are the variants that drop the reference.
# - **"IPO adds a regulariser to the DPO loss."** IPO *replaces* DPO's log-sigmoid by a squared
#   loss towards a finite target margin; that is what keeps its KL regularisation effective on
#   deterministic preferences.
# - **"SimPO penalises long responses."** It *normalises* by length: the reward is the mean
#   log-probability per token, so a response is not favoured or disfavoured merely for having
#   more tokens.
# - **"Constitutional AI filters outputs after generation."** It is a *training* method: the
#   model critiques and revises its own answers against written principles, and the
#   preference labels for the RL stage come from an AI judge (RL from AI feedback)
#   {cite}`bai2022constitutional`.
# - **"Higher reward means a better model."** Only at comparable KL, and only if the reward
#   is the thing you care about. Section 5 shows a model with the highest reward and the
#   highest win-rate that writes gibberish.
# ```
#
# ## Summary
#
# You turned rankings into comparison pairs, wrote the Bradley-Terry loss, PPO's clipped
# surrogate, GAE and the DPO loss, and checked each against the library. With the library's
# versions you trained a reward model on comparisons from a programmatic labeller, aligned the
# Shakespeare GPT with DPO and with PPO, compared them with best-of-n on a reward-KL plot and
# by win-rate, and watched PPO without a KL penalty hack its reward. The library's
# `llmcourse.alignment` module holds everything used here, including the IPO, KTO, ORPO and
# SimPO losses.
#
# ## References
#
# {cite}`christiano2017deep` (learning from human preferences), {cite}`ziegler2019finetuning`
# and {cite}`stiennon2020summarize` (RLHF for language models),
# {cite}`ouyang2022instructgpt` (InstructGPT), {cite}`bradley1952rank` (Bradley-Terry),
# {cite}`schulman2017ppo` (PPO), {cite}`schulman2016gae` (GAE), {cite}`rafailov2023dpo` (DPO),
# {cite}`azar2024ipo` (IPO), {cite}`ethayarajh2024kto` (KTO), {cite}`hong2024orpo` (ORPO),
# {cite}`meng2024simpo` (SimPO), {cite}`gao2023scaling` (reward over-optimisation),
# {cite}`beirami2024bestofn` (best-of-n), {cite}`touvron2023llama2` (rejection sampling in
# Llama 2), {cite}`bai2022constitutional` (Constitutional AI). Full entries are on the
# [bibliography](../book/bibliography.md) page.
