"""`eenet`: EENet's learned exit policy (Ilhan et al., WACV 2024), a post-hoc baseline.

Fitted on the val-split softmax outputs of a trained run (its `standard` source run), for
one target budget B (MFLOPs) at a time (shared/spec/methods.md §4). Every exit k gets
- a score function s_k = w1ᵀ p_k + w2ᵀ [max p_k, conf_k, s̃_<k] (bias-free; conf_k =
  1 + Σ_c p log p / log C; s̃_<k the earlier exits' scores, clamped to [0, 1], detached),
  EENet's estimate of "exit k is right", and
- an assignment MLP r_k = σ(Linear(σ(Linear([x_k, s̃_<k])))), x_k = [p_k, max, conf_k];
  π_i = softmax_k(r_ik) is the share of sample i that the policy sends to exit k.
Losses (per mini-batch; acc_ik = 1[exit k classifies i correctly]; `bce_loss`, `kl_loss`,
`cost_loss`): L_bce weights each exit's BCE(clamp(s), acc) by the detached π normalised
over the batch; L_kl = KL(τ‖π) with τ ∝ clamp(s̃)^β over exits; L_cost = |E[Σ_k π_k C_k] −
B| / B. The score functions learn L_bce and the assignment MLPs α_ce·L_kl + α_cost·L_cost
in alternating phases of `period` epochs (score phase first). The best restart (val only)
gives exit proportions π̄ = mean π over val; thresholds on the unclamped s_k follow from
π̄ by the protocol's sequential rule (§0); a sample leaves at the first k with s_k ≥ T_k.

One fit per budget, `num_budgets` budgets evenly spaced over [C_1, C_K]: the exit rule
`eenet_budget` (methods/eenet_budget.py) gives one `ExitDecision` per budget (point j =
1 … J, q = NaN), each on its budget's own score `eenet_score_bJJ`. The exits also emit each
budget's assignment output r_k (`eenet_assign_bJJ`, never a decision's score, so never
costed), from which the rule re-derives π̄ and the thresholds with `budget_thresholds`.

Released-code bugs (§4) and how this file treats them:
1. compute_loss returns the undefined `ce_loss`: `objective_terms` returns the KL term.
2. ScoreNormalizer broadcasts (N,1)+(N,1,1) to (N,N,1), so every sample gets sample 0's
   probability term: `exit_score` is per sample (a test permutes the batch).
3. fit_exit_assigner never calls zero_grad: `optimisation_step` zeroes the gradients
   before every backward (a test repeats a step and checks the gradient is not doubled).
4. `best_model = m` keeps a reference, so the last epoch's model is returned: the best
   epoch's parameters are copied (a test re-runs training up to the best epoch).
5. Restarts are compared with args.val_budget (None in a sweep): each budget's restarts
   are compared with that budget. The ea_{b}_.pkl / ea_{b}.pkl mismatch does not arise:
   the calibrate stage saves the fitted state in model.pt and `load_fitted` restores it.
6. The 'exp' exit distribution with conf_mode 'nn' never fills its scores: with
   `q_rule_score` the learned scores of an assigner fitted at B = C_K with α_ce = α_cost
   = 0 (the code's 'exp' fit) are the run's own score `score`, thresholded by the
   generic q-proportion rule `score` (39 points).
7. ImageNet inference params lack weight_decay, beta_ce, period: every family resolves
   every hyperparameter; ImageNet uses the CIFAR values (the spec: reuse them).
8. Earlier scores enter later exits clamped+detached in training but unclamped at test:
   clamped in both (`exit_output` keeps the clamped scores in the exit memory).

Paper/code vs this file: docs/deviations.md ("EENet") tabulates the rest (MFLOPs for
latencies, one seeded permutation, one Adam per phase, the best epoch by the full objective,
the closest restart when none is within tolerance, the §0 thresholds). What the code here
also needs to say:
- All budgets and restarts train together as a bank of independent models (batched
  parameters): Adam is elementwise, so each model's updates are its own.
- Patience counts only epochs with L_cost < `cost_gate`, as in the code; a model that never
  gets there keeps its last epoch (the code's fallback).
- τ of a sample whose clamped scores are all 0 is uniform (the code divides 0 by 0);
  p log p at p = 0 is 0 (xlogy; the code gets NaN).
- `bounded_assignment` and `weight_decay` are off by default: with bug 3 fixed, the final σ
  of the assignment MLP (π_k confined to [1/(1 + (K−1)e), e/(e + K − 1)]) and Adam's L2
  decay 1e-2 keep π̄ from following the budget. The variant `released` restores both; both
  run in the studies and are drawn in Fig. 4.
- `extra_mflops` counts the score function's linear map (C + 2 + k multiply-adds at exit
  k < K), not the softmax/max/entropy features it reads (like joint_bilevel's gater); the
  last exit's score is computed but never read (T_K = −∞), so it costs nothing.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from eebench.backbones.flops import module_mflops
from eebench.methods.base import (
    POSTHOC_FIGURES,
    Display,
    ExitOutput,
    HyperparameterError,
    Memory,
    PostHocMethod,
    register_posthoc_method,
)
from eebench.pipelines.evaluation import protocol
from eebench.pipelines.evaluation.outputs import OWN_SCORE, RunOutputs

log = logging.getLogger(__name__)

NAME = "eenet"
RULE = "eenet_budget"
SCORE_PREFIX = "eenet_score_b"
ASSIGN_PREFIX = "eenet_assign_b"
#: Exit memory key: the clamped scores of the exits passed so far, B × models × k.
PREVIOUS = "eenet_previous_scores"
#: Floats a bank of models may hold (parameters, gradients, Adam state, activations),
#: so that CIFAR-100 trains a few large banks and ImageNet several small ones.
BANK_FLOATS = 2**26
EVAL_CHUNK = 4096  # val samples per forward when evaluating fitted models
BCE_CAP = 100.0  # BCELoss floors its logs at −100
F32_TINY = torch.finfo(torch.float32).tiny


def score_name(j: int) -> str:
    """The score of budget j (1-based): its thresholds are fitted on it."""
    return f"{SCORE_PREFIX}{j:02d}"


def assign_name(j: int) -> str:
    """The assignment output r_k of budget j, from which the rule re-derives π̄."""
    return f"{ASSIGN_PREFIX}{j:02d}"


def budget_indices(scores: Sequence[str]) -> list[int]:
    """Budget indices j of the score names that have both outputs, in order."""
    found = [int(m.group(1)) for s in scores if (m := re.fullmatch(rf"{SCORE_PREFIX}(\d+)", s))]
    return sorted(j for j in found if assign_name(j) in scores)


# --------------------------------------------------------------------------- inputs


def exit_inputs(probs: Tensor) -> Tensor:
    """x_k = [p_k, max p_k, 1 + Σ_c p log p / log C] (B × (C+2)): exit k's only (§4)."""
    num_classes = probs.shape[-1]
    conf = 1.0 + torch.special.xlogy(probs, probs).sum(-1) / math.log(num_classes)
    return torch.cat([probs, probs.amax(-1, keepdim=True), conf.unsqueeze(-1)], dim=-1)


# --------------------------------------------------------------------------- models


@dataclass
class ExitParams:
    """One exit's parameters for M models: score weights [w1, w2] (M × (D+k)) and the
    assignment MLP (first layer M × H × (D+k), M × H; second M × H, M), D = C + 2."""

    score: Tensor
    w1: Tensor
    b1: Tensor
    w2: Tensor
    b2: Tensor

    FIELDS: ClassVar[tuple[str, ...]] = ("score", "w1", "b1", "w2", "b2")


# Layout: models first, samples last (M × … × B), so that every op is a contiguous matmul
# or elementwise pass; x_k (B × D) is shared by all models, the earlier scores are M × k × B.


def exit_score(params: ExitParams, x: Tensor, previous: Tensor) -> Tensor:
    """Unclamped s_k (M × B) of every model: each sample's own inputs only (bug 2)."""
    d = x.shape[-1]
    own = params.score[:, :d] @ x.T
    if previous.shape[1] == 0:
        return own
    return own + (params.score[:, None, d:] @ previous).squeeze(1)


def exit_assignment(
    params: ExitParams, x: Tensor, previous: Tensor, bounded: bool = False
) -> Tensor:
    """r_k (M × B) of every model: the assignment MLP on [x_k, s̃_<k]; in (0, 1) through a
    final sigmoid when `bounded` (as released), else the MLP's linear output."""
    d = x.shape[-1]
    first = torch.matmul(params.w1[:, :, :d], x.T) + params.b1[..., None]  # M × H × B
    if previous.shape[1] > 0:
        first = torch.baddbmm(first, params.w1[:, :, d:], previous)
    hidden = torch.sigmoid(first)
    r = (params.w2[:, None, :] @ hidden).squeeze(1) + params.b2[:, None]
    return torch.sigmoid(r) if bounded else r


def forward_exits(
    exits: Sequence[ExitParams], xs: Sequence[Tensor], bounded: bool = False
) -> tuple[Tensor, Tensor]:
    """Unclamped scores and assignment outputs (K × M × B) over all exits; later exits read
    the earlier scores clamped and detached (§4; the same at inference, bug 8)."""
    num_models = exits[0].score.shape[0]
    previous = xs[0].new_zeros(num_models, 0, xs[0].shape[0])
    scores, assigns = [], []
    for params, x in zip(exits, xs, strict=True):
        s = exit_score(params, x, previous)
        assigns.append(exit_assignment(params, x, previous, bounded))
        scores.append(s)
        previous = torch.cat([previous, s.detach().clamp(0.0, 1.0)[:, None, :]], dim=1)
    return torch.stack(scores), torch.stack(assigns)


def hidden_width(width: int, ratio: float) -> int:
    """floor(ratio · width), at least 1 (the code's int(in_dim · ratio))."""
    return max(1, int(width * ratio))


def _uniform(shape: tuple[int, ...], fan_in: int, generator: torch.Generator) -> Tensor:
    """nn.Linear's default initialisation: U(−1/√fan_in, 1/√fan_in)."""
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(shape, generator=generator) * 2.0 - 1.0) * bound


def init_exit(
    num_classes: int, k: int, ratio: float, generator: torch.Generator
) -> dict[str, Tensor]:
    """One model's exit-k parameters, initialised like the code's two Linear stacks."""
    d = num_classes + 2
    width = d + k
    hidden = hidden_width(width, ratio)
    score = torch.cat(
        [_uniform((num_classes,), num_classes, generator), _uniform((2 + k,), 2 + k, generator)]
    )
    return {
        "score": score,
        "w1": _uniform((hidden, width), width, generator),
        "b1": _uniform((hidden,), width, generator),
        "w2": _uniform((hidden,), hidden, generator),
        "b2": _uniform((), hidden, generator),
    }


class ModelBank(nn.Module):
    """M independent EENet models (every exit's score function and assignment MLP) as
    batched parameters, one seed per model."""

    def __init__(
        self,
        seeds: Sequence[int],
        num_classes: int,
        num_exits: int,
        ratio: float,
        bounded: bool = False,
    ) -> None:
        super().__init__()
        self.bounded = bounded
        per_model = []
        for seed in seeds:
            generator = torch.Generator().manual_seed(int(seed))
            per_model.append(
                [init_exit(num_classes, k, ratio, generator) for k in range(num_exits)]
            )
        self.exit_params = nn.ModuleList()
        for k in range(num_exits):
            exit_k = nn.ParameterDict(
                {
                    f: nn.Parameter(torch.stack([m[k][f] for m in per_model]))
                    for f in ExitParams.FIELDS
                }
            )
            self.exit_params.append(exit_k)

    def exits(self) -> list[ExitParams]:
        return [ExitParams(**{f: p[f] for f in ExitParams.FIELDS}) for p in self.exit_params]

    def score_parameters(self) -> list[nn.Parameter]:
        return [p["score"] for p in self.exit_params]

    def assign_parameters(self) -> list[nn.Parameter]:
        return [p[f] for p in self.exit_params for f in ExitParams.FIELDS if f != "score"]

    def forward(self, xs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        return forward_exits(self.exits(), xs, self.bounded)


# --------------------------------------------------------------------------- losses


# Losses: exits first, samples last (K × … × N, the protocol's K × N), one value per model.


def binary_cross_entropy(scores: Tensor, correct: Tensor) -> Tensor:
    """Elementwise BCE for 0/1 targets, −log of the probability given to the target, capped
    at 100 like torch's BCELoss (whose logs are floored at −100): a score clamped to the
    wrong end costs 100. Fewer passes over the tensor than F.binary_cross_entropy."""
    given = torch.where(correct > 0.5, scores, 1.0 - scores)
    return torch.where(given > 0, -given.clamp_min(F32_TINY).log(), BCE_CAP)


def softmax_exits(assign: Tensor) -> tuple[Tensor, Tensor]:
    """π = softmax over exits (axis 0) of r, and log π."""
    log_pi = torch.log_softmax(assign, dim=0)
    return log_pi.exp(), log_pi


def bce_loss(scores: Tensor, correct: Tensor, pi: Tensor) -> Tensor:
    """L_bce = (1/K) Σ_k Σ_i ω_ik BCE(s_ik, acc_ik), ω_ik = π̃_ik / Σ_i π̃_ik (π̃ detached);
    `scores` are the clamped s."""
    weights = pi.detach()
    weights = weights / weights.sum(-1, keepdim=True)
    per_term = binary_cross_entropy(scores, correct)
    return (weights * per_term).sum(-1).sum(0) / scores.shape[0]


def kl_loss(scores: Tensor, log_pi: Tensor, beta: float) -> Tensor:
    """L_kl = KL(τ‖π) = Σ τ (log τ − log π), averaged over all K·N entries (KLDivLoss's
    default 'mean'); τ_ik = s̃_ik^β / Σ_k s̃_ik^β with s̃ the clamped scores, detached;
    uniform when they are all 0 (the code divides 0 by 0); 0 · log 0 = 0."""
    target = scores.detach()
    if beta != 1.0:
        target = target.pow(beta)
    total = target.sum(0, keepdim=True)
    tau = torch.where(total > 0, target / total.clamp_min(F32_TINY), 1.0 / scores.shape[0])
    log_tau = torch.where(tau > 0, tau.clamp_min(F32_TINY).log(), 0.0)
    return (tau * (log_tau - log_pi)).mean(dim=(0, -1))


def cost_loss(pi: Tensor, costs: Tensor, budget: Tensor | float) -> Tensor:
    """L_cost = |(1/N) Σ_i Σ_k π_ik C_k − B| / B (budget: scalar or one per model)."""
    per_exit = costs.view(-1, *[1] * (pi.dim() - 1))
    expected = (pi * per_exit).sum(0).mean(-1)
    return (expected - budget).abs() / budget


def objective_terms(
    raw: Tensor, assign: Tensor, correct: Tensor, costs: Tensor, budgets: Tensor, beta: float
) -> Tensor:
    """(L_bce, L_kl, L_cost), 3 × M, from unclamped scores and r (K × M × N), correct K × N."""
    scores = raw.clamp(0.0, 1.0)
    pi, log_pi = softmax_exits(assign)
    correct = correct[:, None, :]  # one row for every model
    bce = bce_loss(scores, correct, pi)
    return torch.stack([bce, kl_loss(scores, log_pi, beta), cost_loss(pi, costs, budgets)])


def active_phases(epoch: int, period: int) -> tuple[bool, bool]:
    """(score phase, assignment phase) of an epoch: alternating every `period` epochs,
    score functions first; both every epoch when period ≤ 1 (as in the code)."""
    if period <= 1:
        return True, True
    scoring = (epoch // period) % 2 == 0
    return scoring, not scoring


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class Settings:
    """The training hyperparameters of one bank (§4 defaults in `EENet.hparams`)."""

    lr: float
    weight_decay: float
    epochs: int
    batch_size: int
    beta_ce: float
    period: int
    patience: int
    cost_gate: float

    @classmethod
    def from_hparams(cls, hp: dict[str, Any]) -> Settings:
        return cls(**{f: hp[f] for f in cls.__dataclass_fields__})


@dataclass
class Data:
    """Val inputs of every exit (N × (C+2)), correctness (K × N, float) and costs (K)."""

    xs: list[Tensor]
    correct: Tensor
    costs: Tensor

    def rows(self, index: Tensor) -> tuple[list[Tensor], Tensor]:
        return [x[index] for x in self.xs], self.correct[:, index]


@dataclass
class BankResult:
    """The kept parameters of every model (each model's best epoch), that epoch (−1: no
    epoch met the cost gate, the last epoch is kept) and the number of epochs run."""

    state: dict[str, Tensor]
    best_epoch: Tensor
    epochs_run: int


def optimisation_step(
    bank: ModelBank,
    optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer],
    batch: tuple[list[Tensor], Tensor],
    data: Data,
    targets: tuple[Tensor, Tensor, Tensor],
    phases: tuple[bool, bool],
    beta: float,
) -> Tensor:
    """One mini-batch step of the active phase(s); returns the detached terms (3 × M).

    Gradients are zeroed before every backward (bug 3). `targets` = (budgets, α_ce, α_cost)
    per model.
    """
    xs, correct = batch
    budgets, alpha_ce, alpha_cost = targets
    raw, assign = bank(xs)
    terms = objective_terms(raw, assign, correct, data.costs, budgets, beta)
    loss = raw.new_zeros(())
    if phases[0]:
        loss = loss + terms[0].sum()
    if phases[1]:
        loss = loss + (alpha_ce * terms[1] + alpha_cost * terms[2]).sum()
    bank.zero_grad(set_to_none=True)
    if loss.requires_grad:
        loss.backward()
        for optimizer, active in zip(optimizers, phases, strict=True):
            if active:
                optimizer.step()
    return terms.detach()


def train_bank(
    bank: ModelBank,
    data: Data,
    targets: tuple[Tensor, Tensor, Tensor],
    settings: Settings,
    permutation: Tensor,
) -> BankResult:
    """EENet's training loop for every model of the bank at once (§4).

    Each epoch walks the fixed permutation in batches; a model's epoch counts once its
    mean L_cost is below the gate: then the best full objective so far is kept (a copy,
    bug 4), and `patience` counted epochs without improvement stop it. Stopped models
    keep training with the others but their kept parameters no longer change.
    """
    alpha_ce, alpha_cost = targets[1], targets[2]
    optimizers = tuple(
        torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay, foreach=True)
        for params in (bank.score_parameters(), bank.assign_parameters())
    )
    num_models = alpha_ce.shape[0]
    best = {name: p.detach().clone() for name, p in bank.named_parameters()}
    best_loss = torch.full((num_models,), math.inf)
    best_epoch = torch.full((num_models,), -1, dtype=torch.long)
    patience = torch.full((num_models,), settings.patience, dtype=torch.long)
    stopped = torch.zeros(num_models, dtype=torch.bool)
    # The permutation is fixed: gather every batch's rows once, not in each of ~10,000 steps.
    batches = [data.rows(b) for b in permutation.split(settings.batch_size)]
    epoch = -1
    for epoch in range(settings.epochs):
        phases = active_phases(epoch, settings.period)
        terms = torch.stack(
            [
                optimisation_step(bank, optimizers, batch, data, targets, phases, settings.beta_ce)
                for batch in batches
            ]
        ).mean(0)
        full = terms[0] + alpha_ce * terms[1] + alpha_cost * terms[2]
        counted = (terms[2] < settings.cost_gate) & ~stopped
        improved = counted & (full < best_loss)
        for name, p in bank.named_parameters():
            best[name][improved] = p.detach()[improved]
        best_loss = torch.where(improved, full, best_loss)
        best_epoch = torch.where(improved, epoch, best_epoch)
        patience = torch.where(improved, settings.patience, patience - (counted & ~improved).long())
        stopped |= patience <= 0
        if stopped.all():
            break
    never = best_epoch < 0
    for name, p in bank.named_parameters():
        best[name][never] = p.detach()[never]
    return BankResult(best, best_epoch, epoch + 1)


def evaluate_bank(
    bank: ModelBank, state: dict[str, Tensor], xs: Sequence[Tensor]
) -> tuple[Tensor, Tensor]:
    """Unclamped scores and assignment outputs (K × M × N) of the kept parameters."""
    bank.load_state_dict(state)
    with torch.no_grad():
        parts = [
            bank([x[i : i + EVAL_CHUNK] for x in xs]) for i in range(0, len(xs[0]), EVAL_CHUNK)
        ]
    return torch.cat([p[0] for p in parts], dim=-1), torch.cat([p[1] for p in parts], dim=-1)


# --------------------------------------------------------------------------- thresholds


def budget_thresholds(scores: np.ndarray, assign: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exit proportions π̄ (K) = mean over samples of softmax_k(r), and the thresholds (K) of
    the §0 sequential rule on the scores (K × N) for those proportions (T_K = −∞)."""
    r = np.asarray(assign, dtype=np.float64)
    pi = np.exp(r - r.max(axis=0, keepdims=True))
    proportions = (pi / pi.sum(axis=0, keepdims=True)).mean(axis=1)
    return proportions, protocol.fit_thresholds(scores, proportions[None])[0]


def choose_restart(
    top1: Sequence[float], implied: Sequence[float], budget: float, tolerance: float
) -> int:
    """The restart of best val top-1 among those whose implied cost is within `tolerance`
    of this budget (bug 5: not of another budget); else the one of closest implied cost."""
    gap = np.abs(np.asarray(implied, dtype=np.float64) - budget) / budget
    within = np.flatnonzero(gap < tolerance)
    if within.size == 0:
        return int(np.argmin(gap))
    return int(within[np.argmax(np.asarray(top1, dtype=np.float64)[within])])


# --------------------------------------------------------------------------- the method


@dataclass(frozen=True)
class ModelSpec:
    """One model to train: its budget's index (None: the q-rule score), restart, target
    budget, loss weights and seed."""

    budget_index: int | None
    restart: int
    budget: float
    alpha_ce: float
    alpha_cost: float
    seed: int


def derived_seed(*keys: int) -> int:
    """A seed from the method's seed and a purpose (0: the permutation; 1, j, r: the model of
    budget j — 0 for the q-rule model — and restart r), independent of how models are banked."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


@cache
def score_mflops(num_classes: int, k: int) -> float:
    """MFLOPs of exit k's score function: its bias-free linear map of C + 2 + k inputs."""
    width = num_classes + 2 + k
    return module_mflops(nn.Linear(width, 1, bias=False), torch.zeros(1, width))


@register_posthoc_method
class EENet(PostHocMethod):
    """EENet's score functions and exit assignment, fitted per budget on val (§4)."""

    name: ClassVar[str] = NAME
    exit_rules: ClassVar[tuple[str, ...]] = (RULE,)
    # Under max_softmax it is its source run by construction: drawn under its own rule only.
    display: ClassVar[Display] = Display(
        "EENet (unbounded assignment)",
        "#ff7f0e",
        "X",
        figures=POSTHOC_FIGURES,
        main_rule=RULE,
        rules=(RULE,),
    )
    code_version: ClassVar[str] = "2"
    # The code's CIFAR inference params (config.py); restarts and the 10% tolerance of
    # dynamic_evaluate; patience and the 0.1 cost gate of fit_exit_assigner.
    hparams: ClassVar[dict[str, Any]] = {
        "num_budgets": 20,
        "restarts": 10,
        "epochs": 1000,
        "batch_size": 512,
        "lr": 3e-5,
        "weight_decay": 0.0,
        "alpha_ce": 1e-3,
        "alpha_cost": 1e-2,
        "beta_ce": 1.0,
        "period": 10,
        "hidden_ratio": 0.5,
        "patience": 100,
        "cost_gate": 0.1,
        "budget_tolerance": 0.1,
        "q_rule_score": True,
        "bounded_assignment": False,
    }
    # The released code's choices that keep π̄ from following the budget (docstring).
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        "released": {
            "hparams": {"weight_decay": 1e-2, "bounded_assignment": True},
            "display": {
                "label": "EENet (released, bounded assignment)",
                "color": "#b35806",
                "marker": "D",
            },
        },
    }
    # Small CPU studies: fewer budgets (each one a fit of `restarts` models).
    hparams_by_family: ClassVar[dict[str, dict[str, Any]]] = {
        "fmnist": {"num_budgets": 6, "restarts": 3},
        "synthetic": {"num_budgets": 6, "restarts": 3},
    }

    def __init__(self, hparams: dict[str, Any], num_exits: int, seed: int = 0) -> None:
        super().__init__(hparams, num_exits, seed)
        self._report: list[dict[str, Any]] = []  # per budget, what `_choose` kept
        if num_exits < 2 or hparams["num_budgets"] < 1 or hparams["restarts"] < 1:
            raise HyperparameterError(
                f"eenet: needs at least 2 exits, num_budgets >= 1 and restarts >= 1; got "
                f"{num_exits} exits, {hparams['num_budgets']}, {hparams['restarts']}"
            )

    # ------------------------------------------------------------------ fitting

    def model_specs(self, costs: np.ndarray) -> list[ModelSpec]:
        """Every budget's restarts, then (with q_rule_score) the code's 'exp' fit: B = C_K,
        α_ce = α_cost = 0, one restart."""
        hp = self.hp
        budgets = np.linspace(costs[0], costs[-1], hp["num_budgets"])
        specs = [
            ModelSpec(
                j, r, float(b), hp["alpha_ce"], hp["alpha_cost"], derived_seed(self.seed, 1, j, r)
            )
            for j, b in enumerate(budgets, start=1)
            for r in range(hp["restarts"])
        ]
        if hp["q_rule_score"]:
            specs.append(
                ModelSpec(None, 0, float(costs[-1]), 0.0, 0.0, derived_seed(self.seed, 1, 0, 0))
            )
        return specs

    def _bank_size(self, num_classes: int) -> int:
        """Models per bank so that one bank holds at most BANK_FLOATS floats."""
        per_model = 0
        for k in range(self.num_exits):
            width = num_classes + 2 + k
            hidden = hidden_width(width, self.hp["hidden_ratio"])
            per_model += 4 * (width * (hidden + 1) + 2 * hidden + 1)  # params, grads, Adam
            per_model += (6 * self.hp["batch_size"] + 2 * EVAL_CHUNK) * (hidden + 2)
        return max(1, BANK_FLOATS // per_model)

    def _train(
        self, data: Data, specs: list[ModelSpec]
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Every spec's kept parameters (buffer name -> M × …) and its unclamped scores and
        assignment outputs on val (M × K × N), bank by bank."""
        settings = Settings.from_hparams(self.hp)
        generator = torch.Generator().manual_seed(derived_seed(self.seed, 0))
        permutation = torch.randperm(data.correct.shape[1], generator=generator)
        num_classes = data.xs[0].shape[1] - 2
        size = self._bank_size(num_classes)
        states, raws, assigns = [], [], []
        for start in range(0, len(specs), size):
            chunk = specs[start : start + size]
            bank = ModelBank(
                [s.seed for s in chunk],
                num_classes,
                self.num_exits,
                self.hp["hidden_ratio"],
                self.hp["bounded_assignment"],
            )
            targets = tuple(
                torch.tensor([getattr(s, f) for s in chunk], dtype=torch.float32)
                for f in ("budget", "alpha_ce", "alpha_cost")
            )
            result = train_bank(bank, data, targets, settings, permutation)
            log.info("eenet: %d models trained for %d epochs", len(chunk), result.epochs_run)
            raw, assign = evaluate_bank(bank, result.state, data.xs)
            states.append(result.state)
            raws.append(raw.transpose(0, 1))  # M × K × N
            assigns.append(assign.transpose(0, 1))
        kept = {
            buffer_name(field, k): torch.cat([s[f"exit_params.{k}.{field}"] for s in states])
            for k in range(self.num_exits)
            for field in ExitParams.FIELDS
        }
        return kept, torch.cat(raws), torch.cat(assigns)

    def fit(self, outputs: RunOutputs) -> None:
        """Val only: every budget's restarts, the best by val top-1 within tolerance."""
        val = outputs.val
        if val.num_exits != self.num_exits:
            raise ValueError(
                f"eenet: built for {self.num_exits} exits, the outputs have {val.num_exits}"
            )
        logits = torch.from_numpy(np.ascontiguousarray(val.logits)).float()
        data = Data(
            xs=[exit_inputs(torch.softmax(z, dim=-1)) for z in logits],
            correct=torch.from_numpy(val.correct).float(),
            costs=torch.as_tensor(outputs.flops, dtype=torch.float32),
        )
        flops = np.asarray(outputs.flops, dtype=np.float64)
        specs = self.model_specs(flops)
        kept, raw, assign = self._train(data, specs)
        # Judged as the rule will judge them: float32 outputs, K × N per model.
        chosen = self._choose(specs, raw.numpy(), assign.numpy(), val.correct, flops)
        for name, tensor in kept.items():
            self.register_buffer(name, tensor[chosen].clone())
        budgets = [specs[i].budget for i in chosen if specs[i].budget_index is not None]
        self.register_buffer("budgets", torch.tensor(budgets, dtype=torch.float64))

    def _choose(
        self,
        specs: list[ModelSpec],
        raw: np.ndarray,
        assign: np.ndarray,
        correct: np.ndarray,
        flops: np.ndarray,
    ) -> list[int]:
        """Index (into specs) of the kept model of every budget, then of the q-rule model."""
        chosen, missed = [], []
        self._report = []
        tolerance = self.hp["budget_tolerance"]
        for j in range(1, self.hp["num_budgets"] + 1):
            candidates = [i for i, s in enumerate(specs) if s.budget_index == j]
            budget = specs[candidates[0]].budget
            top1, implied = [], []
            for i in candidates:
                proportions, thresholds = budget_thresholds(raw[i], assign[i])
                rows = protocol.thresholded_rows(raw[i], correct, flops, thresholds[None])
                top1.append(float(rows.top1.iloc[0]))
                implied.append(float(proportions @ flops))
            pick = choose_restart(top1, implied, budget, tolerance)
            met = abs(implied[pick] - budget) / budget < tolerance
            log.info(
                "eenet: budget %d (%.4g MFLOPs): restart %d, implied %.4g MFLOPs (%s), "
                "val top-1 %.2f%%", j, budget, pick, implied[pick],
                "met" if met else "missed", top1[pick],
            )  # fmt: skip
            self._report.append(
                {
                    "budget": j,
                    "budget_mflops": budget,
                    "restart": pick,
                    "implied_mflops": implied[pick],
                    "met": met,
                    "val_top1": top1[pick],
                }
            )
            if not met:
                missed.append(f"{budget:.4g} (implied {implied[pick]:.4g})")
            chosen.append(candidates[pick])
        if missed:
            log.warning(
                "eenet: %d of %d budgets (MFLOPs) had no restart within %.0f%%, kept the closest: "
                "%s", len(missed), len(chosen), 100 * tolerance, ", ".join(missed),
            )  # fmt: skip
        return chosen + [i for i, s in enumerate(specs) if s.budget_index is None]

    def fit_report(self) -> dict[str, Any]:
        """Per budget: the kept restart, its implied cost on val (Σ_k π̄_k C_k) and whether it
        met the budget (within `budget_tolerance`), and its val top-1."""
        return {"budget_tolerance": self.hp["budget_tolerance"], "budgets": self._report}

    # ------------------------------------------------------------------ inference

    @property
    def num_budgets(self) -> int:
        return int(self.budgets.shape[0])

    def exit_params(self, k: int) -> ExitParams:
        """The kept models' exit-k parameters (rows: budgets, then the q-rule model)."""
        return ExitParams(**{f: getattr(self, buffer_name(f, k)) for f in ExitParams.FIELDS})

    def exit_output(self, k: int, head: ExitOutput, memory: Memory) -> ExitOutput:
        """The head's prediction, and per budget s_k (`eenet_score_bJJ`, what its thresholds
        read) and r_k (`eenet_assign_bJJ`, from which the rule derives π̄); with the q-rule
        model, its s_k as the run's own `score`. Earlier scores come clamped from memory."""
        params = self.exit_params(k)
        x = exit_inputs(torch.softmax(head.logits.float(), dim=-1))
        # The memory is batch-first (B × M × k), so that early exit can drop rows.
        kept = memory.get(PREVIOUS, x.new_zeros(x.shape[0], params.score.shape[0], 0))
        previous = kept.permute(1, 2, 0)
        s = exit_score(params, x, previous)
        r = exit_assignment(params, x, previous, self.hp["bounded_assignment"])
        memory[PREVIOUS] = torch.cat([kept, s.T.clamp(0.0, 1.0)[..., None]], dim=-1)
        scores = {**head.scores}
        for j in range(self.num_budgets):
            scores[score_name(j + 1)] = s[j]
            scores[assign_name(j + 1)] = r[j]
        if s.shape[0] > self.num_budgets:
            scores[OWN_SCORE] = s[-1]
        return ExitOutput(head.logits, head.features, scores)

    def extra_mflops(self) -> dict[str, np.ndarray]:
        """Per exit k < K the score function's linear map, under the rules that read that
        score only (the last exit always exits; the assignment MLPs never run in a
        deployed rule); nothing before fitting."""
        if not hasattr(self, "budgets"):
            return {}
        num_classes = self.exit_params(0).score.shape[1] - 2
        per_exit = np.array(
            [*(score_mflops(num_classes, k) for k in range(self.num_exits - 1)), 0.0]
        )
        names = [score_name(j + 1) for j in range(self.num_budgets)]
        if self.exit_params(0).score.shape[0] > self.num_budgets:
            names.append(OWN_SCORE)
        return {name: per_exit.copy() for name in names}


def buffer_name(field: str, k: int) -> str:
    """The buffer of one ExitParams field at exit k, e.g. `w1_2`."""
    return f"{field}_{k}"
