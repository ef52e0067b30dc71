"""`joint_bilevel`: the seed paper's method (Addad et al. 2024): backbone and gater co-trained.

A gater (one MLP per non-final exit, reading confidence features of that exit's logits)
gives P_k, the probability of exiting at k; Eq. 5 turns P into Pr(k|x) and Eq. 9
sharpens it with a temperature T into the exit distribution A. The backbone θ
minimises Σ_k (A_k + 1)(CE_k + λĉ_k) (Eq. 10, inner) with gradient through A
(Eq. 11); the gater φ minimises Σ_k A_k (CE_k + λĉ_k) on logits that are constants
(Eq. 10 outer, Eq. 12). As in the released code (shared/spec/methods.md §1), each batch is split
in halves that alternate as inner and outer data, one first-order step each.

Paper vs this file (numbers refer to shared/spec/methods.md §1, "Paper vs code"):
- Follows the paper: features confidence+entropy (CIFAR) / all three (ImageNet),
  hidden 500, λ=2, φ lr 1e-3→1e-5, φ interval 10 / 100 (items 1, 3–6). The variant
  `released_code` switches to the code's confidence+margin, hidden 100, λ=0.1,
  φ min lr 1e-6, interval 10 everywhere; the seven feature subsets of Table 1 and
  λ/T sweeps are variants too.
- Follows the code where the paper is loose: (A+1) with the sharpened A rather than
  Eq. 4's (Pr+1) (item 8); eps 1e-5 inside both logs; one alternating step on the
  other half-batch instead of an inner solve (item 9); positive entropy (item 2;
  a sign flip the first gater layer absorbs). Not switchable.
- Not in the code: the `frozen` variant (Fig. 3; backbone trained by `standard`,
  frozen, only φ learns); hard labels as well as Mixup/CutMix soft targets (the code
  crashes without Mixup); a batch of one sample (it serves as both halves).
- Optimiser family, schedules, recipe and augmentation (items 7, 10, 11) belong to
  the engine and recipes, not to this file.
- Mixup/CutMix as the authors wrote it: the whole batch is mixed, then split, so each
  outer-half image contains an inner-half image (timm's batch mode pairs i with B−1−i).
  Unlike L2W's held-out half (`held_out_half`), this is kept: the halves alternate roles
  and the outer step is the paper's method, not a held-out evaluation (docs/deviations.md).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eebench.backbones.flops import module_mflops
from eebench.methods.base import (
    POSTHOC_FIGURES,
    TRAIN_FIGURES,
    Display,
    ExitOutput,
    HyperparameterError,
    Memory,
    OptimizerHandle,
    StepEngine,
    StepOutput,
    Sweep,
    TableRows,
    TrainContext,
    TrainMethod,
    per_sample_cross_entropy,
    register_train_method,
)
from eebench.pipelines.evaluation.outputs import OWN_SCORE

FEATURES: tuple[str, ...] = ("confidence", "margin", "entropy")
#: Row order of Table 1: single features, then pairs, then all three (the paper's order).
FEATURE_ROWS: tuple[str, ...] = tuple(
    "+".join(subset) for size in (1, 2, 3) for subset in itertools.combinations(FEATURES, size)
)
EPS = 1e-5  # inside both logs of the exit distribution, as in the released code
#: A run whose last epoch gives one exit more than this share of the mean A has collapsed:
#: its gater sends (almost) every sample to that exit, so its score ranks nothing.
COLLAPSE_SHARE = 0.95


def canonical_features(names: Sequence[str]) -> tuple[str, ...]:
    """The requested gater features in canonical order; unknown, repeated or none is an error."""
    unknown = [n for n in names if n not in FEATURES]
    if unknown or not names or len(set(names)) != len(names):
        raise HyperparameterError(
            f"joint_bilevel: features must be a non-empty subset, without repeats, of "
            f"{', '.join(FEATURES)}; got {list(names)}"
        )
    return tuple(f for f in FEATURES if f in names)


def gater_features(logits: torch.Tensor, features: Sequence[str]) -> torch.Tensor:
    """B×d confidence features of one exit's logits, differentiable (the θ-step needs it)."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    p = log_p.exp()
    top2 = p.topk(2, dim=-1).values
    columns = {
        "confidence": top2[:, 0],
        "margin": top2[:, 0] - top2[:, 1],
        "entropy": -(p * log_p).sum(dim=-1),
    }
    return torch.stack([columns[f] for f in canonical_features(features)], dim=-1)


def exit_distribution(P: torch.Tensor, temperature: float) -> torch.Tensor:
    """A (B×K) from the gater's P (B×(K−1)): Eq. 5 in log space, sharpened by 1/T (Eq. 9).

    Log space with eps keeps values and gradients finite for P exactly 0 or 1.
    """
    zeros = P.new_zeros(P.shape[0], 1)
    log_exit = torch.cat([torch.log(P + EPS), zeros], dim=1)  # a_k, a_K = 0
    log_stay = torch.log(1.0 - P + EPS).cumsum(dim=1)
    log_reach = torch.cat([zeros, log_stay], dim=1)  # b_k = Σ_{j<k} log(1 − P_j + eps)
    return torch.softmax((log_exit + log_reach) / temperature, dim=1)


def theta_loss(ce: torch.Tensor, A: torch.Tensor, costs: torch.Tensor, lam: float) -> torch.Tensor:
    """Inner objective (Eq. 10): sample mean of Σ_k (A_ik + 1)(CE_ik + λĉ_k)."""
    return ((A + 1.0) * (ce + lam * costs)).sum(dim=1).mean()


def phi_loss(ce: torch.Tensor, A: torch.Tensor, costs: torch.Tensor, lam: float) -> torch.Tensor:
    """Outer objective (Eq. 10): sample mean of Σ_k A_ik (CE_ik + λĉ_k)."""
    return (A * (ce + lam * costs)).sum(dim=1).mean()


def _mlp(width_in: int, hidden: int, num_layers: int) -> nn.Sequential:
    """Linear → GELU → (num_layers−1)×[Linear → GELU] → Linear(·,1) → sigmoid."""
    layers: list[nn.Module] = [nn.Linear(width_in, hidden), nn.GELU()]
    for _ in range(num_layers - 1):
        layers += [nn.Linear(hidden, hidden), nn.GELU()]
    layers += [nn.Linear(hidden, 1), nn.Sigmoid()]
    return nn.Sequential(*layers)


class ExitGater(nn.Module):
    """K−1 independent MLPs; MLP_k reads only exit k's features and gives P_k."""

    def __init__(
        self, num_exits: int, features: Sequence[str], hidden: int, num_layers: int
    ) -> None:
        super().__init__()
        if num_exits < 2 or num_layers < 1:
            raise HyperparameterError(
                f"joint_bilevel: needs at least 2 exits and num_layers >= 1, "
                f"got {num_exits} exits and num_layers={num_layers}"
            )
        self.num_exits = num_exits
        self.features = canonical_features(features)
        width = len(self.features)
        self.mlps = nn.ModuleList(_mlp(width, hidden, num_layers) for _ in range(num_exits - 1))

    def exit_probability(self, k: int, logits: torch.Tensor) -> torch.Tensor:
        """P_k (B,) of exit k < K from that exit's logits alone."""
        return self.mlps[k](gater_features(logits, self.features)).squeeze(1)

    def forward(self, logits: Sequence[torch.Tensor]) -> torch.Tensor:
        """P (B×(K−1)) in (0, 1) from the K exits' logits (the last exit's are not read)."""
        if len(logits) != self.num_exits:
            raise ValueError(f"gater built for {self.num_exits} exits, got {len(logits)} logits")
        columns = [
            mlp(gater_features(z, self.features))
            for mlp, z in zip(self.mlps, logits[:-1], strict=True)
        ]
        return torch.cat(columns, dim=1)


@dataclass
class HalfStep:
    """One step on one half-batch, all detached and as the step saw them (before its update):
    loss (0-d), logits, per-exit CE (B×K), the gater's P (B×(K−1)) and A (B×K).

    Everything stays a tensor so that `_report` reads every number of a batch from the
    device at once (one sync on CUDA instead of one per half-step and metric).
    """

    loss: torch.Tensor
    logits: list[torch.Tensor]
    ce: torch.Tensor
    P: torch.Tensor
    A: torch.Tensor


def gater_diagnostics(
    ce: torch.Tensor, P: torch.Tensor, A: torch.Tensor, costs: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Batch statistics of the gater, as device vectors by metric name (vector entry k−1 is
    exit k): what each exit costs in CE, what the gater says (P's mean and spread, so a
    gater stuck at one value shows), where A sends mass and samples, and the expected cost.

    P's std is the population std, so that a one-sample batch gives 0 rather than NaN.
    """
    exits = torch.arange(A.shape[1], device=A.device)
    chosen = (A.argmax(dim=1, keepdim=True) == exits).float()  # one-hot, no host check
    return {
        "A_exit": A.mean(dim=0),
        "expected_cost": (A * costs).sum(dim=1).mean()[None],
        "argmaxA_exit": chosen.mean(dim=0),
        "P_mean_exit": P.mean(dim=0),
        "P_std_exit": P.std(dim=0, correction=0),
        "ce_exit": ce.mean(dim=0),
    }


def _to_host(named: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """Every tensor's values as floats, read in one device→host transfer (one CUDA sync)."""
    flat = torch.cat([t.float().reshape(-1) for t in named.values()]).tolist()
    values, start = {}, 0
    for name, t in named.items():
        values[name] = flat[start : start + t.numel()]
        start += t.numel()
    return values


def _flatten(values: dict[str, list[float]]) -> dict[str, float]:
    """Metrics by column name: a per-exit vector named `..._exit` becomes `..._exit1`,
    `..._exit2`, …; any other name holds one value and keeps its name."""
    return {
        f"{name}{k + 1}" if name.endswith("_exit") else name: value
        for name, vector in values.items()
        for k, value in enumerate(vector)
    }


def _half_step(
    loss: torch.Tensor,
    logits: Sequence[torch.Tensor],
    ce: torch.Tensor,
    P: torch.Tensor,
    A: torch.Tensor,
) -> HalfStep:
    """What a half-step reports, cut from the graph: its backward pass is already done."""
    return HalfStep(
        loss.detach(), [z.detach() for z in logits], ce.detach(), P.detach(), A.detach()
    )


def _per_exit(values: Sequence[float]) -> str:
    return "/".join(f"{v:.3g}" for v in values)


def collapse_warning(
    row: dict[str, float], costs: Sequence[float], lam: float, temperature: float
) -> str | None:
    """The run-log warning for an epoch row whose mean A gives one exit more than
    COLLAPSE_SHARE, or None: such a gater sends (almost) everyone to one exit, so the
    budget curve of its score is degenerate, and the log should say why and what to try."""
    shares = [row.get(f"A_exit{k + 1}", 0.0) for k in range(len(costs))]
    top = max(range(len(shares)), key=shares.__getitem__)
    if not shares[top] > COLLAPSE_SHARE:
        return None
    exit_k, last = top + 1, len(costs)
    text = (
        f"joint_bilevel: the exit distribution A collapsed: exit {exit_k} of {last} takes "
        f"{shares[top]:.3f} of the mean A mass over the last epoch (λ={lam:g}, T={temperature:g})."
    )
    if exit_k < last:
        text += (
            f" The gater sends (almost) every sample to exit {exit_k}: the cost term dominates,"
            f" i.e. the per-exit CE differences are small compared with λ·Δĉ, so going deeper"
            f" never pays; a smaller λ weighs CE more."
        )
    else:
        text += (
            " The gater sends (almost) every sample to the last exit: the per-exit CE"
            " differences outweigh λ·Δĉ, so exiting early never pays; a larger λ weighs cost more."
        )
    ce = [row.get(f"ce_exit{k + 1}") for k in range(last)]
    if all(v is not None for v in ce):
        text += f" Mean CE per exit {_per_exit(ce)} vs λ·ĉ {_per_exit([lam * c for c in costs])}."
    return text


def _halves(x: torch.Tensor, target: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """First and second half (first gets the extra sample); one sample serves as both."""
    if x.shape[0] == 1:
        return [(x, target), (x, target)]
    cut = (x.shape[0] + 1) // 2
    return [(x[:cut], target[:cut]), (x[cut:], target[cut:])]


@register_train_method
class JointBilevel(TrainMethod):
    """Backbone θ and gater φ trained by alternation; the gater's P_k is the run's exit score.

    The reported loss is the mean θ loss of the two halves (the φ loss when frozen). The
    step metrics (epoch means in train_log.csv) diagnose the gater, from the reported
    half-steps (θ, or φ when frozen) before their update: `A_exit{k}`, `expected_cost`,
    `argmaxA_exit{k}` (share of samples whose most likely exit is k), `P_mean_exit{k}` and
    `P_std_exit{k}` (k < K) and `ce_exit{k}`; the count `phi_steps` is the number of φ
    updates, summed over the epoch. `epoch_warnings` flags a collapsed A.
    """

    name: ClassVar[str] = "joint_bilevel"
    score_names: ClassVar[tuple[str, ...]] = (OWN_SCORE,)
    display: ClassVar[Display] = Display(
        "Ours (joint_bilevel)", "#d62728", "D", figures=(*TRAIN_FIGURES, *POSTHOC_FIGURES)
    )
    # Table 1: MSDNet runs that differ only in their gater features.
    table_rows: ClassVar[tuple[TableRows, ...]] = (
        TableRows("table1", "features", families=("msdnet",), order=FEATURE_ROWS),
    )
    sweeps: ClassVar[tuple[Sweep, ...]] = (
        Sweep("lam", "λ", "λ (weight of the cost term, log scale)", log=True),
        Sweep("temperature", "T", "T (temperature of the exit distribution)"),
    )
    hparams: ClassVar[dict[str, Any]] = {
        "features": ["confidence", "entropy"],
        "hidden": 500,
        "num_layers": 1,
        "lam": 2.0,
        "temperature": 0.5,
        "phi_interval": 10,
        "phi_lr": 1e-3,
        "phi_min_lr": 1e-5,
        "phi_weight_decay": 1e-4,
        "frozen_backbone": False,
    }
    # Paper appendix B: CIFAR = the defaults; ImageNet reads all three features and
    # updates φ every 100 iterations.
    hparams_by_family: ClassVar[dict[str, dict[str, Any]]] = {
        "cifar": {},
        "fmnist": {},
        "imagenet": {"features": list(FEATURES), "phi_interval": 100},
    }
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        **{
            "+".join(subset): {"hparams": {"features": list(subset)}}
            for subset in (
                ("confidence",),
                ("margin",),
                ("entropy",),
                ("confidence", "margin"),
                ("confidence", "entropy"),
                ("margin", "entropy"),
                FEATURES,
            )
        },
        "frozen": {
            "hparams": {"frozen_backbone": True},
            "init_from": "standard",
            "display": {
                "label": "frozen + Ours",
                "color": "#9467bd",
                "marker": "v",
                "figures": ("fig3_budgeted",),
                # Under max softmax it is `standard` (same backbone): only the gater's
                # score rule tells it apart.
                "main_rule": OWN_SCORE,
                "rules": (OWN_SCORE,),
            },
        },
        # The authors' released code (shared/spec/methods.md §1): φ every 10 iterations.
        "released_code": {
            "hparams": {
                "features": ["confidence", "margin"],
                "hidden": 100,
                "lam": 0.1,
                "phi_min_lr": 1e-6,
                "phi_interval": 10,
            },
            "recipe": "released_code",
            "activation": "gelu",
            "display": {
                "label": "Ours (released code)",
                "color": "#e377c2",
                "marker": "d",
                "figures": (),
            },
        },
        "lam=0.1": {"hparams": {"lam": 0.1}},
        "lam=0.5": {"hparams": {"lam": 0.5}},
        "lam=1": {"hparams": {"lam": 1.0}},
        "lam=4": {"hparams": {"lam": 4.0}},
        "T=0.25": {"hparams": {"temperature": 0.25}},
        "T=1": {"hparams": {"temperature": 1.0}},
    }

    def __init__(self, backbone: nn.Module, hparams: dict[str, Any], ctx: TrainContext) -> None:
        super().__init__(backbone, hparams, ctx)
        if hparams["phi_interval"] < 1 or hparams["temperature"] <= 0:
            raise HyperparameterError(
                "joint_bilevel: phi_interval must be >= 1 and temperature > 0, got "
                f"{hparams['phi_interval']} and {hparams['temperature']}"
            )
        self.gater = ExitGater(
            ctx.num_exits, hparams["features"], hparams["hidden"], hparams["num_layers"]
        )
        self.register_buffer("costs", ctx.normalized_costs, persistent=False)
        self.frozen = bool(hparams["frozen_backbone"])
        if self.frozen:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        self._phi_handle: OptimizerHandle | None = None

    # ------------------------------------------------------------------ engine hooks

    def configure(self, engine: StepEngine) -> None:
        """The φ optimizer: the recipe's family, its own cosine schedule, no warm-up."""
        self._phi_handle = engine.add_optimizer(
            "gater",
            self.gater.parameters(),
            lr=self.hp["phi_lr"],
            min_lr=self.hp["phi_min_lr"],
            weight_decay=self.hp["phi_weight_decay"],
        )

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [] if self.frozen else list(self.backbone.parameters())

    def train(self, mode: bool = True) -> JointBilevel:
        """A frozen backbone stays in eval mode (BN running stats are part of what is frozen)."""
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    # ------------------------------------------------------------------ steps

    def _ce_P_A(
        self, logits: list[torch.Tensor], target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample, per-exit CE (B×K), the gater's P (B×(K−1)) and A (B×K), in float32
        outside autocast."""
        logits = [z.float() for z in logits]
        ce = torch.stack([per_sample_cross_entropy(z, target) for z in logits], dim=1)
        P = self.gater(logits)
        return ce, P, exit_distribution(P, self.hp["temperature"])

    def theta_step(self, x: torch.Tensor, target: torch.Tensor, engine: StepEngine) -> HalfStep:
        """Inner step: backbone in train mode; A keeps its graph so θ also learns through it."""
        self.backbone.train()
        with engine.autocast():
            logits = self.backbone(x)
        ce, P, A = self._ce_P_A(logits, target)
        loss = theta_loss(ce, A, self.costs, self.hp["lam"])
        engine.optimize(loss)
        return _half_step(loss, logits, ce, P, A)

    def phi_step(self, x: torch.Tensor, target: torch.Tensor, engine: StepEngine) -> HalfStep:
        """Outer step: logits are constants (eval mode, no_grad), only φ moves."""
        if self._phi_handle is None:
            raise RuntimeError("joint_bilevel: configure(engine) must run before training")
        self.backbone.eval()
        with torch.no_grad(), engine.autocast():
            logits = self.backbone(x)
        if not self.frozen:
            self.backbone.train()
        ce, P, A = self._ce_P_A(logits, target)
        loss = phi_loss(ce, A, self.costs, self.hp["lam"])
        engine.optimize(loss, self._phi_handle)
        return _half_step(loss, logits, ce, P, A)

    def training_step(
        self, x: torch.Tensor, target: torch.Tensor, step: int, engine: StepEngine
    ) -> StepOutput:
        """θ on h1, [φ on h2], θ on h2, [φ on h1]; frozen: φ on h1 and h2 every step."""
        (x1, t1), (x2, t2) = _halves(x, target)
        if self.frozen:
            reported = [self.phi_step(x1, t1, engine), self.phi_step(x2, t2, engine)]
            return self._report(reported, target, phi_steps=len(reported))
        update_phi = step % self.hp["phi_interval"] == 0
        reported, phi_steps = [], 0
        for (x_in, t_in), (x_out, t_out) in (((x1, t1), (x2, t2)), ((x2, t2), (x1, t1))):
            reported.append(self.theta_step(x_in, t_in, engine))
            if update_phi:
                self.phi_step(x_out, t_out, engine)
                phi_steps += 1
        return self._report(reported, target, phi_steps)

    def _report(self, halves: list[HalfStep], target: torch.Tensor, phi_steps: int) -> StepOutput:
        """Batch-level output; `[:batch]` drops the duplicate when one sample was both halves."""
        batch = target.shape[0]
        logits = [torch.cat(zs)[:batch] for zs in zip(*(h.logits for h in halves), strict=True)]
        ce, P, A = (
            torch.cat(parts)[:batch]
            for parts in zip(*((h.ce, h.P, h.A) for h in halves), strict=True)
        )
        losses = torch.stack([h.loss for h in halves])
        values = _to_host({"loss": losses, **gater_diagnostics(ce, P, A, self.costs)})  # 1 sync
        loss = sum(values.pop("loss")) / len(halves)
        return StepOutput(
            loss=loss,
            logits=logits,
            targets=target,
            metrics=_flatten(values),
            counts={"phi_steps": float(phi_steps)},
        )

    # ------------------------------------------------------------------ run log

    def epoch_warnings(self, row: dict[str, float], last_epoch: bool) -> list[str]:
        """A collapse warning after the last epoch only: that is the state the run ends in
        (an earlier epoch's collapse may still recover, and would repeat every epoch)."""
        if not last_epoch:
            return []
        message = collapse_warning(row, self.costs.tolist(), self.hp["lam"], self.hp["temperature"])
        return [] if message is None else [message]

    # ------------------------------------------------------------------ inference

    def exit_output(self, k: int, head: ExitOutput, memory: Memory) -> ExitOutput:
        """The head's prediction; exit score P_k from MLP_k (1 at the last exit, which
        always exits)."""
        if k == self.ctx.num_exits - 1:
            score = head.logits.new_ones(head.logits.shape[0], dtype=torch.float32)
        else:
            score = self.gater.exit_probability(k, head.logits)
        return ExitOutput(head.logits, head.features, {**head.scores, OWN_SCORE: score})

    def extra_mflops(self) -> dict[str, np.ndarray]:
        """MLP_k's MFLOPs at exit k < K (fvcore, like the backbone), under the score rule only:
        with max-softmax exits the authors' inference never runs the gater."""
        width = len(self.gater.features)
        per_exit = [module_mflops(mlp, torch.zeros(1, width)) for mlp in self.gater.mlps]
        return {OWN_SCORE: np.array([*per_exit, 0.0])}
