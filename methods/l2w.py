"""`l2w`: Learning to Weight Samples for dynamic early-exiting networks (Han et al., ECCV 2022).

A weight-prediction network φ (WPN) reads each sample's per-exit losses and gives every
(sample, exit) CE term a weight; the backbone θ minimises the weighted sum. φ is
meta-learned so that the weighting helps budgeted inference: a virtual step θ′(φ) of the
real optimiser on the weighted loss of one half of the batch, then the loss that budgeted
inference at one target budget incurs on the other half, evaluated at θ′, is minimised
over φ through the second-order path θ′ → g(φ) (shared/spec/methods.md §2), computed
exactly without a double backward (`L2W.meta_objective`). Inference is
unchanged: every exit predicts with its own head, exits by max softmax (the defaults of
`TrainMethod`), and the WPN is never run.

Paper/code vs this file (shared/spec/methods.md §2; LeapLabTHU/L2W-DEN tools/main_cifar_DDP.py,
tools/meta.py, models/weight_predict.py):
- Follows the code: WPN Linear(K, 500) → ReLU → Linear(500, K) → tanh on detached per-exit
  losses (or confidences, or both); w = 1 + ε(o − mean o) with the `col`/`row`/`mat` means,
  no clipping; halves = the two chunks of the loader batch (the first gets the odd sample);
  per batch meta(p1 → p2), θ-step on p1, meta(p2 → p1), θ-step on p2, meta steps every
  `meta_interval` batches of an epoch (counted from each epoch's first); the virtual
  forward runs in train mode (batch statistics) and its BN running statistics are thrown
  away; θ is a constant in θ′ except through g (MW-Net style); φ by Adam with L2 weight
  decay on a cosine to 0, no warm-up.
- Differs, by design:
  * Written functionally (`torch.func.functional_call` with cloned buffers) instead of a
    fresh model copy per meta step, and the meta-gradient is not a double backward: a
    first-order gradient u = ∂L_meta/∂g and one forward-mode product J_CE(θ)·u on the train
    half give ∂L_meta/∂w exactly (`L2W.meta_objective`). The train half's forward is the
    real step's (its graph kept for the inner gradient, then the real backward). Same
    numbers up to round-off.
  * The virtual step mirrors every parameter group of the real optimiser (its current lr,
    momentum buffer, dampening, Nesterov, weight decay), and AdamW/Adam as well (recipes
    with AdamW, e.g. paper_imagenet); the code reads SGD's group 0 only. Identical for the
    code's single-group SGD.
  * Exits of the meta loss: the budgeted protocol (shared/spec/protocol.md, step 2) on the
    meta half, so samples that tie at a threshold all leave, as in evaluation; the code
    takes exactly floor(n·q_k) samples in sort order. Identical unless confidences tie.
  * Target proportions in float64 (`protocol.exit_counts`) vs the code's float32, so
    floor(n·q_k) could differ at an exact boundary.
  * Soft targets (Mixup/CutMix, label smoothing) in every CE; the code has hard labels.
    Under Mixup/CutMix each half is mixed on its own (`held_out_half`): timm's batch mode
    pairs sample i with B−1−i, so mixing the whole batch would put a train-half image in
    every meta-half image, and the meta half would no longer be held out.
  * A batch of one sample serves as both halves. No DDP: halves are per process batch.
  * Under AMP the forwards use the recipe's autocast; with fp16 the inner gradient, u and
    the forward-mode product are not loss-scaled (bf16, the CUDA default, needs no
    scaling). `torch.compile`d backbones are not supported by the meta step (forward-mode
    AD through `functional_call`).
  * `meta_optimizer: recipe` swaps Adam for the engine's optimizer of the recipe's family.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from eebench.methods.base import (
    TRAIN_FIGURES,
    Display,
    HyperparameterError,
    OptimizerHandle,
    StepEngine,
    StepOutput,
    TrainContext,
    TrainMethod,
    per_sample_cross_entropy,
    register_train_method,
)
from eebench.pipelines.evaluation.protocol import exit_counts, exit_proportions
from eebench.pipelines.training.budgeted import budgeted_exits, budgeted_loss
from eebench.pipelines.training.virtual_step import virtual_step

INPUTS: tuple[str, ...] = ("loss", "conf", "both")
NORMALIZATIONS: tuple[str, ...] = ("col", "row", "mat")
META_OPTIMIZERS: tuple[str, ...] = ("adam", "recipe")
Autocast = Callable[[], AbstractContextManager[Any]]


# --------------------------------------------------------------------------- weights


def _upcast(z: torch.Tensor) -> torch.Tensor:
    """Half-precision logits (autocast) in float32; float64 stays (the gradient tests)."""
    return z.to(torch.promote_types(z.dtype, torch.float32))


def exit_losses(logits: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-exit CE (B×K), for hard labels or soft targets."""
    return torch.stack([per_sample_cross_entropy(_upcast(z), target) for z in logits], dim=1)


def exit_confidences(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Max softmax per sample and exit (B×K), the protocol's exit score."""
    return torch.stack([F.softmax(_upcast(z), dim=-1).amax(dim=-1) for z in logits], dim=1)


def wpn_input(kind: str, ce: torch.Tensor, logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """What the WPN reads, detached (the code feeds constants): CE, confidence or both."""
    if kind == "loss":
        return ce.detach()
    conf = exit_confidences([z.detach() for z in logits])
    return conf if kind == "conf" else torch.cat([ce.detach(), conf], dim=1)


def centred(o: torch.Tensor, normalization: str) -> torch.Tensor:
    """o minus its mean over exits per sample (`col`), over the batch per exit (`row`) or
    over the whole matrix (`mat`), the code's constraint_dimension (spec §2)."""
    if normalization == "col":
        return o - o.mean(dim=1, keepdim=True)
    if normalization == "row":
        return o - o.mean(dim=0, keepdim=True)
    return o - o.mean()


def weighted_loss(w: torch.Tensor, ce: torch.Tensor) -> torch.Tensor:
    """Σ_k (1/|h|) Σ_i w_ik CE_ik, the backbone objective on a half h (spec §2)."""
    return (w * ce).mean(dim=0).sum()


class WeightNet(nn.Module):
    """The WPN: Linear → ReLU → (num_layers−1)×[Linear → ReLU] → Linear(·, K) → tanh, then
    w = 1 + ε(o − mean o). Weights lie in (1 − 2ε, 1 + 2ε): negative when ε > 0.5, as in
    the code (no clipping)."""

    def __init__(
        self,
        num_exits: int,
        *,
        input_kind: str,
        hidden: int,
        num_layers: int,
        epsilon: float,
        normalization: str,
    ) -> None:
        super().__init__()
        width = 2 * num_exits if input_kind == "both" else num_exits
        layers: list[nn.Module] = [nn.Linear(width, hidden), nn.ReLU()]
        for _ in range(num_layers - 1):
            layers += [nn.Linear(hidden, hidden), nn.ReLU()]
        layers += [nn.Linear(hidden, num_exits), nn.Tanh()]
        self.mlp = nn.Sequential(*layers)
        self.epsilon = epsilon
        self.normalization = normalization

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Weights B×K from WPN inputs B×K (or B×2K)."""
        return 1.0 + self.epsilon * centred(self.mlp(inputs), self.normalization)


# --------------------------------------------------------------------------- method


@dataclass
class ThetaStep:
    """A backbone step on one half, detached: its loss (0-d), logits, CE and weights (B×K)."""

    loss: torch.Tensor
    logits: list[torch.Tensor]
    ce: torch.Tensor
    w: torch.Tensor


def _halves(x: torch.Tensor, target: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The code's chunk(2): the first half gets the odd sample; one sample is both halves."""
    if x.shape[0] == 1:
        return [(x, target), (x, target)]
    cut = (x.shape[0] + 1) // 2
    return [(x[:cut], target[:cut]), (x[cut:], target[cut:])]


def _to_host(named: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """Every tensor's values as floats, in one device→host transfer (one CUDA sync)."""
    flat = torch.cat([t.detach().float().reshape(-1) for t in named.values()]).tolist()
    values, start = {}, 0
    for name, t in named.items():
        values[name] = flat[start : start + t.numel()]
        start += t.numel()
    return values


@register_train_method
class L2W(TrainMethod):
    """Backbone trained on WPN-weighted per-exit CE; the WPN meta-learned for one budget.

    Reported per step (epoch means in train_log.csv): `loss` (the weighted backbone loss,
    mean of the two halves), `w_exit{k}` (mean weight of exit k), `w_std` and `w_min` (spread
    and minimum of all weights; 1 and 0 spread = uniform weighting), `ce_exit{k}`. Counts
    (epoch sums): `meta_steps`, and `meta_loss_sum` (the epoch's mean meta loss is
    meta_loss_sum / meta_steps, also when meta steps skip iterations).
    """

    name: ClassVar[str] = "l2w"
    held_out_half: ClassVar[bool] = True  # Mixup/CutMix within each half (module docstring)
    display: ClassVar[Display] = Display("L2W", "#2ca02c", "s", figures=TRAIN_FIGURES)
    # 1: meta-gradient by a first-order backward and a forward-mode JVP instead of a double
    # backward, the train half's forward shared with the real step (round-off changes).
    code_version: ClassVar[str] = "2"
    hparams: ClassVar[dict[str, Any]] = {
        "epsilon": 0.8,
        "normalization": "col",
        "input": "loss",
        "hidden": 500,
        "num_layers": 1,
        "meta_interval": 1,
        "target_p_index": 15,  # q = 15/20 = 0.75, the README's setting
        "meta_lr": 1e-4,
        "meta_min_lr": 0.0,
        "meta_weight_decay": 1e-4,
        "meta_optimizer": "adam",
    }
    # README settings (spec §2): CIFAR ε 0.8 col, meta every iteration; ImageNet ε 0.3 mat,
    # meta every 100 iterations. Fashion-MNIST and synthetic data stand in for CIFAR.
    hparams_by_family: ClassVar[dict[str, dict[str, Any]]] = {
        "cifar": {},
        "fmnist": {},
        "synthetic": {},
        "imagenet": {"epsilon": 0.3, "normalization": "mat", "meta_interval": 100},
    }

    def __init__(self, backbone: nn.Module, hparams: dict[str, Any], ctx: TrainContext) -> None:
        super().__init__(backbone, hparams, ctx)
        _check_hparams(hparams)
        self.weight_net = WeightNet(
            ctx.num_exits,
            input_kind=hparams["input"],
            hidden=hparams["hidden"],
            num_layers=hparams["num_layers"],
            epsilon=float(hparams["epsilon"]),
            normalization=hparams["normalization"],
        )
        #: Target exit proportions of the meta objective (one budget, spec §2 step 5).
        self.proportions = exit_proportions(hparams["target_p_index"] / 20, ctx.num_exits)
        self._meta_handle: OptimizerHandle | None = None

    # ------------------------------------------------------------------ engine hooks

    def configure(self, engine: StepEngine) -> None:
        """φ's optimizer in an engine slot (state checkpointed, cosine schedule, no warm-up).

        The code's Adam with L2 decay, or (`meta_optimizer: recipe`) the recipe's family.
        """
        self._meta_handle = engine.add_optimizer(
            "weight_net",
            self.weight_net.parameters(),
            lr=self.hp["meta_lr"],
            min_lr=self.hp["meta_min_lr"],
            weight_decay=self.hp["meta_weight_decay"],
            family="adam" if self.hp["meta_optimizer"] == "adam" else None,
        )

    # ------------------------------------------------------------------ weights

    def sample_weights(self, ce: torch.Tensor, logits: Sequence[torch.Tensor]) -> torch.Tensor:
        """w (B×K) from the current WPN; differentiable in φ, the inputs are constants."""
        return self.weight_net(wpn_input(self.hp["input"], ce, logits))

    # ------------------------------------------------------------------ meta step

    def meta_objective(
        self,
        train: tuple[torch.Tensor, torch.Tensor],
        meta: tuple[torch.Tensor, torch.Tensor],
        optimizer: torch.optim.Optimizer,
        autocast: Autocast = nullcontext,
        logits: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """L_meta(φ): budgeted inference at the target proportions imitated on the meta half
        at θ′(φ) (spec §2, meta steps 1–5), as its value with its exact gradient to φ.

        `logits`: the train half's from a train-mode forward, with their graph to the
        backbone's parameters (the real step's forward, whose graph the inner gradient
        keeps); None runs that forward here on cloned buffers. The forward at θ′ and the
        forward-mode product run in train mode on cloned buffers, like the code's fresh
        model copy: the real model is never written.

        The second-order path without a double backward: w(φ) enters θ′ only through
        g = ∇θ Σ_k mean_i w_ik ℓ_ik, linear in w, and every optimizer's update is
        elementwise in g. So ∂L_meta/∂w_ik = ⟨u, ∇θ ℓ_ik⟩ / |h| with u = ∂L_meta/∂g,
        a first-order backward through the forward at θ′ and the update. The ⟨u, ∇θ ℓ_ik⟩
        for all i, k are one forward-mode product J·u of the per-sample, per-exit CE of the
        train half (with its batch-statistics BN) at θ. The result equals L_meta, and its
        gradient to φ is that of Σ_k mean_i w_ik (J·u)_ik (J·u a constant). The exits of
        the meta half are chosen under no_grad, as in the code (piecewise constant).
        """
        self.backbone.train()
        x, target = train
        params = dict(self.backbone.named_parameters())
        buffers = {name: b.clone() for name, b in self.backbone.named_buffers()}
        with torch.enable_grad():
            if logits is None:
                with autocast():
                    logits = functional_call(self.backbone, {**params, **buffers}, x)
            ce = exit_losses(logits, target)
            w = self.sample_weights(ce, logits)
            grads = torch.autograd.grad(
                weighted_loss(w.detach(), ce),
                list(params.values()),
                retain_graph=True,  # the real step backpropagates a shared forward again
                allow_unused=True,
            )
            pairs = zip(params, grads, strict=True)
            g = {name: grad.requires_grad_() for name, grad in pairs if grad is not None}
            theta_new = virtual_step(optimizer, list(params.values()), [g.get(n) for n in params])
            x_meta, t_meta = meta
            with autocast():
                meta_logits = functional_call(
                    self.backbone, {**dict(zip(params, theta_new, strict=True)), **buffers}, x_meta
                )
            with torch.no_grad():
                counts = exit_counts(len(t_meta), self.proportions)
                exits = budgeted_exits(exit_confidences(meta_logits), counts)
            loss = budgeted_loss(exit_losses(meta_logits, t_meta), exits)
            u = torch.autograd.grad(loss, list(g.values()), allow_unused=True)
        tangents = {name: t for name, t in zip(g, u, strict=True) if t is not None}
        surrogate = weighted_loss(w, self._loss_jvp(x, target, params, buffers, tangents, autocast))
        return loss.detach() + (surrogate - surrogate.detach())

    def _loss_jvp(
        self,
        x: torch.Tensor,
        target: torch.Tensor,
        params: dict[str, torch.Tensor],
        buffers: dict[str, torch.Tensor],
        tangents: dict[str, torch.Tensor],
        autocast: Autocast,
    ) -> torch.Tensor:
        """J_ℓ(θ)·u: the derivative of the per-sample, per-exit CE (B×K) of (x, target) in
        the direction `tangents` (by parameter name; the others fixed), by forward-mode AD
        through a train-mode forward on `buffers`; a constant."""
        with torch.no_grad(), fwAD.dual_level():
            duals = {
                name: fwAD.make_dual(p.detach(), tangents[name]) if name in tangents else p
                for name, p in params.items()
            }
            with autocast():
                logits = functional_call(self.backbone, {**duals, **buffers}, x)
            return fwAD.unpack_dual(exit_losses(logits, target)).tangent

    def meta_step(
        self,
        train: tuple[torch.Tensor, torch.Tensor],
        meta: tuple[torch.Tensor, torch.Tensor],
        engine: StepEngine,
        logits: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """One φ update from the meta objective, through the engine's φ slot; the meta
        loss (0-d, detached). `logits` as in `meta_objective`."""
        if self._meta_handle is None:
            raise RuntimeError("l2w: configure(engine) must run before training")
        optimizer = engine.backbone_optimizer().optimizer
        loss = self.meta_objective(train, meta, optimizer, engine.autocast, logits)
        engine.optimize(loss, self._meta_handle)
        return loss.detach()

    # ------------------------------------------------------------------ backbone step

    def train_forward(self, x: torch.Tensor, engine: StepEngine) -> list[torch.Tensor]:
        """The real model's train-mode forward of a half (its BN statistics move, once per
        half, as in the code's backbone step); the logits keep their graph to θ."""
        self.backbone.train()
        with engine.autocast():
            return list(self.backbone(x))

    def theta_step(
        self, logits: Sequence[torch.Tensor], target: torch.Tensor, engine: StepEngine
    ) -> ThetaStep:
        """The real backbone step on a half's `train_forward`: weighted CE with the current
        WPN's weights as constants."""
        ce = exit_losses(logits, target)
        with torch.no_grad():
            w = self.sample_weights(ce, logits)
        loss = weighted_loss(w, ce)
        engine.optimize(loss)
        return ThetaStep(loss.detach(), [z.detach() for z in logits], ce.detach(), w)

    def training_step(
        self, x: torch.Tensor, target: torch.Tensor, step: int, engine: StepEngine
    ) -> StepOutput:
        """The code's order: [meta(p1 → p2)], θ on p1, [meta(p2 → p1)], θ on p2; meta steps
        where the batch index within the epoch is a multiple of `meta_interval` (the code's
        `i % meta_interval`, i restarting every epoch)."""
        first, second = _halves(x, target)
        update_phi = (step % self.ctx.steps_per_epoch) % self.hp["meta_interval"] == 0
        halves, meta_losses = [], []
        for train, meta in ((first, second), (second, first)):
            logits = self.train_forward(train[0], engine)
            if update_phi:
                meta_losses.append(self.meta_step(train, meta, engine, logits))
            halves.append(self.theta_step(logits, train[1], engine))
        return self._report(halves, meta_losses, target)

    def _report(
        self, halves: list[ThetaStep], meta_losses: list[torch.Tensor], target: torch.Tensor
    ) -> StepOutput:
        """Batch-level output, one host transfer; `[:batch]` drops a duplicated sample."""
        batch = target.shape[0]
        logits = [torch.cat(zs)[:batch] for zs in zip(*(h.logits for h in halves), strict=True)]
        w = torch.cat([h.w for h in halves])[:batch]
        ce = torch.cat([h.ce for h in halves])[:batch]
        named = {
            "loss": torch.stack([h.loss for h in halves]).mean()[None],
            "w_exit": w.mean(dim=0),
            "w_std": w.std(correction=0)[None],
            "w_min": w.min()[None],
            "ce_exit": ce.mean(dim=0),
        }
        if meta_losses:
            named["meta_loss_sum"] = torch.stack(meta_losses).sum()[None]
        values = _to_host(named)
        metrics = {
            f"{name}{k + 1}": value
            for name in ("w_exit", "ce_exit")
            for k, value in enumerate(values[name])
        }
        metrics.update(w_std=values["w_std"][0], w_min=values["w_min"][0])
        counts = {
            "meta_steps": float(len(meta_losses)),
            "meta_loss_sum": values["meta_loss_sum"][0] if meta_losses else 0.0,
        }
        return StepOutput(
            loss=values["loss"][0], logits=logits, targets=target, metrics=metrics, counts=counts
        )


def _check_hparams(hp: dict[str, Any]) -> None:
    """Values the types alone do not rule out, named in one error."""
    problems = []
    choices = {"input": INPUTS, "normalization": NORMALIZATIONS, "meta_optimizer": META_OPTIMIZERS}
    for key, allowed in choices.items():
        if hp[key] not in allowed:
            problems.append(f"{key} must be one of {', '.join(allowed)}, got {hp[key]!r}")
    for key in ("hidden", "num_layers", "meta_interval"):
        if hp[key] < 1:
            problems.append(f"{key} must be >= 1, got {hp[key]}")
    if not 1 <= hp["target_p_index"] <= 39:
        problems.append(f"target_p_index must be in 1..39 (q = p/20), got {hp['target_p_index']}")
    if hp["epsilon"] < 0:
        problems.append(f"epsilon must be >= 0, got {hp['epsilon']}")
    if problems:
        raise HyperparameterError("l2w: " + "; ".join(problems))
