"""`jei_dnn`: JEI-DNN (Regol et al., ICLR 2024; networkslab/dynn), on a frozen trained backbone.

The run starts from the `standard` run of the same dataset, backbone and seed (the class
default `init_from`): its body and final exit are frozen (eval mode, BN buffers included);
only the intermediate classifiers (ICs) and one gate per IC learn. Gate l is Linear(4, 1)
on u_l = [conf, entropy, margin, entropy of p²/Σp²] of IC l's probabilities (detached,
as the original computes them in numpy); g_l = sigmoid(gate l).

- Gate targets: the oracle exit e*(x) = argmin_l CE_l + λĉ_l over the ICs and the final
  exit (ĉ: cumulative MFLOPs with the gates, over the last exit's), y_l = 1[e* ≤ l];
  BCE with pos_weight_l = min((N − n_l)/max(n_l, 0.1), 5), n_l = #val samples with e* = l,
  recomputed after every epoch of the alternating stage (1 before the first one).
- IC loss: P_l = max(0, min(g_l, 1 − Σ_{j<l} g_j)) (gates without gradient) and
  mean_{i,l} P_il CE_il · Σ_l CE_il / Σ_l P_il CE_il. With the ratio not detached, as
  released (`ic_weighting: released`, the default), this is the plain mean CE in value and
  gradient (shared/spec/methods.md §5); `detached` is the weighting the paper intends.
- Schedule: warm-up L = CE_final + Σ_l (G+1−l)·CE_l, each IC frozen (and reset to its
  best weights) once its val top-1 has not improved for `patience` epochs; warm-up ends
  when every IC is frozen or after `max_warmup_epochs`, then every IC is unfrozen and the
  epochs alternate gate and IC phases of `phase_batches` batches, gate phase first. One SGD
  for ICs and gates (momentum 0.9, no Nesterov, wd 5e-4), lr 0.01 during the warm-up, then a
  cosine stepped once per epoch towards 2e-4 (T_max = the run's epochs, so it never gets
  there: train_dynn.py steps CosineAnnealingLR only after each post-warm-up epoch).
- Length: its own epochs, `epoch_fraction` of the recipe's (at least 1): the original trains
  ICs and gates 10 epochs on a backbone trained for ~300 (README: num_epoch 10–15), so
  10/300 of the backbone's epochs; 10 under paper.yaml's 300, 1 in the CPU studies.
- Inference: a_l = clip(P_l / Π_{j<l}(1 − a_j), 0, 1), the run's own exit score; the
  `jei_gate` rule leaves at the first l with a_l ≥ 0.5 (else the final exit): one
  operating point per run, so a budget curve is one run per λ (the `lam=…` variants).

Choices where the original does not carry over to MSDNet/RANet (the seed paper's port
is undocumented):
- ICs = the backbone's own non-final heads (their FLOPs are the backbone's per-exit
  costs), warm-started from `standard`'s heads; `reinit_ics` re-initialises them (each
  layer's PyTorch default). A head's BN layers follow the IC: train mode while it learns.
- Warm-up is capped at epochs − 1, so that the gates train for at least one epoch; the
  original runs `max_warmup_epochs` (6) of its 10–15.
- Control `heads_only` (`gates: False`, "JEI-DNN control: heads only"): the same ICs,
  epochs, optimiser, schedule and warm-up with no gates; after the warm-up every batch is an
  IC step on the plain mean CE (what the released IC loss equals), and exits are decided by
  the protocol's max-softmax thresholds. It measures what the extra head training alone
  gives, apart from the gates.
- The gates' cost: the original's count of the four features (9C + 1 operations for C
  classes) plus the Linear and sigmoid counted like the backbones (fvcore).
- The suite's splits and protocol: CIFAR-100 val is 5k (the original: 10k), test is not
  averaged over 10 splits.
- Studies should keep `selection: final`: `best_val` ranks epochs by the last exit, which
  is frozen here, so it would keep the first epoch.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eebench.backbones.flops import module_mflops
from eebench.methods.base import (
    Display,
    ExitOutput,
    ExitRule,
    HyperparameterError,
    Memory,
    OptimizerHandle,
    StepEngine,
    StepOutput,
    TrainContext,
    TrainMethod,
    per_sample_cross_entropy,
    register_exit_rule,
    register_train_method,
)
from eebench.pipelines.evaluation.outputs import (
    MAX_SOFTMAX,
    OWN_SCORE,
    ExitDecision,
    RunOutputs,
    SplitOutputs,
)
from eebench.pipelines.training.recipes import cosine

log = logging.getLogger(__name__)

RULE = "jei_gate"
EXIT_AT = 0.5  # a_l ≥ 1/2: the released inference threshold
POS_WEIGHT_CAP = 5.0
MIN_COUNT = 0.1  # n_l floor inside pos_weight, as released
IC_WEIGHTINGS = ("released", "detached")
PHASES = ("warmup", "gate", "ic")
#: The λ grid of the variants around the released default 0.7 (README: 0.15): from
#: almost every sample to the final exit (small λ) to most at the first ones.
LAMBDAS = (0.05, 0.15, 0.3, 1.5)
GATE_SUM, STAY = "jei_gate_sum", "jei_stay"  # memory: Σ_{j<l} g_j and Π_{j<l}(1 − a_j)


# --------------------------------------------------------------------------- pure parts


def gate_inputs(logits: torch.Tensor) -> torch.Tensor:
    """u (B×4) = [conf, entropy, margin, entropy of p²/Σp²] of detached logits: no gradient
    reaches the IC from its gate (the original computes them in numpy)."""
    p = torch.softmax(logits.detach().float(), dim=-1)
    top2 = p.topk(2, dim=-1).values
    sharpened = p.square() / p.square().sum(dim=-1, keepdim=True)
    entropy = torch.special.entr(p).sum(dim=-1)
    sharpened_entropy = torch.special.entr(sharpened).sum(dim=-1)
    return torch.stack([top2[:, 0], entropy, top2[:, 0] - top2[:, 1], sharpened_entropy], dim=1)


def gate_feature_flops(num_classes: int) -> int:
    """The original's count of u's operations (LearnableUncGate.get_flops without the
    Linear): conf C, margin C + 1, entropy 2C, entropy of p²/Σp² 5C."""
    return 9 * num_classes + 1


def oracle_exit(ce: torch.Tensor, costs: torch.Tensor, lam: float) -> torch.Tensor:
    """e* (B,) = argmin_l CE_l + λĉ_l over all K exits (the first on ties)."""
    return (ce + lam * costs).argmin(dim=1)


def gate_targets(exits: torch.Tensor, num_gates: int) -> torch.Tensor:
    """y (B×G) with y_l = 1[e* ≤ l]: gate l should say "exit" from the oracle exit on."""
    return (exits[:, None] <= torch.arange(num_gates, device=exits.device)).float()


def pos_weights(exits: torch.Tensor, num_gates: int) -> torch.Tensor:
    """pos_weight_l = min((N − n_l) / max(n_l, 0.1), 5), n_l = #samples with e* = l."""
    counts = torch.bincount(exits, minlength=num_gates + 1)[:num_gates].double()
    ratio = (len(exits) - counts) / counts.clamp_min(MIN_COUNT)
    return ratio.clamp_max(POS_WEIGHT_CAP).float()


def gate_loss(
    gate_logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor
) -> torch.Tensor:
    """Mean over N×G of the BCE, each positive target's term weighted by its gate's pos_weight."""
    return F.binary_cross_entropy_with_logits(gate_logits, targets, pos_weight=pos_weight)


def exit_shares(g: torch.Tensor) -> torch.Tensor:
    """P (B×G): P_l = max(0, min(g_l, 1 − Σ_{j<l} g_j))."""
    before = g.cumsum(dim=1) - g
    return torch.minimum(g, 1.0 - before).clamp_min(0.0)


def activation_step(
    g: torch.Tensor, gate_sum: torch.Tensor, stay: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """a_l = clip(P_l / Π_{j<l}(1 − a_j), 0, 1) from g_l and the running Σ_{j<l} g_j and
    Π_{j<l}(1 − a_j); returns a_l and both running values after l. A sample some earlier a_j
    already sent out (Π = 0) gets a_l = 1 rather than the original's NaN of 0/0."""
    share = torch.minimum(g, 1.0 - gate_sum).clamp_min(0.0)
    a = (share / stay).nan_to_num(nan=1.0).clamp(0.0, 1.0)
    return a, gate_sum + g, stay * (1.0 - a)


def activations(g: torch.Tensor) -> torch.Tensor:
    """a (B×G) of every gate, the way inference computes them exit by exit."""
    gate_sum, stay = torch.zeros_like(g[:, 0]), torch.ones_like(g[:, 0])
    columns = []
    for k in range(g.shape[1]):
        a, gate_sum, stay = activation_step(g[:, k], gate_sum, stay)
        columns.append(a)
    return torch.stack(columns, dim=1)


def ic_loss(ce: torch.Tensor, shares: torch.Tensor, detach_ratio: bool) -> torch.Tensor:
    """mean_{i,l} P_il CE_il · r_i, r_i = Σ_l CE_il / Σ_l P_il CE_il (B×G inputs).

    Undetached (released), r cancels the weights: the plain mean CE in value and gradient.
    Detached, the gradient of CE_il is weighted by P_il r_i. A sample with Σ_l P_il CE_il = 0
    adds 0 (the original: NaN).
    """
    weighted = shares * ce
    total = weighted.sum(dim=1, keepdim=True).clamp_min(torch.finfo(weighted.dtype).tiny)
    ratio = ce.sum(dim=1, keepdim=True) / total
    return (weighted * (ratio.detach() if detach_ratio else ratio)).mean()


def warmup_loss(ce: torch.Tensor, training: list[bool]) -> torch.Tensor:
    """CE_final + Σ_l (G + 1 − l)·CE_l (l = 0 … G−1) over the ICs still training: a frozen
    IC's term is left out, so its parameters get no gradient (and no SGD step at all)."""
    num_gates = ce.shape[1] - 1
    loss = ce[:, -1].mean()
    for k, trains in enumerate(training):
        if trains:
            loss = loss + (num_gates + 1 - k) * ce[:, k].mean()
    return loss


def reset_parameters(module: nn.Module) -> None:
    """Every layer's PyTorch default initialisation (BN running statistics too)."""
    for layer in module.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()


# --------------------------------------------------------------------------- the method


@register_train_method
class JeiDnn(TrainMethod):
    """ICs and gates trained on the frozen `standard` backbone; the score is a_l.

    train_log.csv: `pos_weight_exit{l}` (the gate loss weights of the epoch) and the counts
    `warmup_steps`, `gate_steps`, `ic_steps`.
    """

    name: ClassVar[str] = "jei_dnn"
    init_from: ClassVar[str | None] = "standard"
    needs_val_each_epoch: ClassVar[bool] = True
    score_names: ClassVar[tuple[str, ...]] = (OWN_SCORE,)
    exit_rules: ClassVar[tuple[str, ...]] = (RULE,)

    @classmethod
    def exit_rules_of(cls, hparams: Mapping[str, Any]) -> tuple[str, ...]:
        """The control (no gates, no a_l) exits by max-softmax thresholds only."""
        return cls.exit_rules if hparams["gates"] else ()

    # Budgeted figures only: its anytime curve is the ICs', the same for every λ. The
    # default variant also shows the generic score rule (the protocol's thresholds on a_l).
    display: ClassVar[Display] = Display(
        "JEI-DNN",
        "#8c564b",
        "P",
        figures=("fig3_budgeted", "fig5_imagenet"),
        main_rule=RULE,
        rules=(RULE, OWN_SCORE),
    )
    code_version: ClassVar[str] = "1"
    hparams: ClassVar[dict[str, Any]] = {
        "lam": 0.7,  # ce_ic_tradeoff, the released default
        "epoch_fraction": 10 / 300,  # of the recipe's epochs: 10 after a 300-epoch backbone
        "lr": 0.01,
        "min_lr": 2e-4,
        "momentum": 0.9,  # train_dynn.py: optim.SGD(momentum=0.9), no Nesterov
        "weight_decay": 5e-4,
        "max_warmup_epochs": 6,
        "patience": 2,
        "phase_batches": 200,
        "ic_weighting": "released",
        "reinit_ics": False,
        "gates": True,  # False: the heads-only control (no gates, max-softmax exits)
    }
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        **{
            f"lam={lam:g}": {"hparams": {"lam": lam}, "display": {"rules": (RULE,)}}
            for lam in LAMBDAS
        },
        "detached": {"hparams": {"ic_weighting": "detached"}},
        "reinit": {"hparams": {"reinit_ics": True}},
        "heads_only": {
            "hparams": {"gates": False},
            "display": {
                "label": "JEI-DNN control: heads only",
                "color": "#c49c94",
                "marker": "h",
                "main_rule": MAX_SOFTMAX,
                "rules": (MAX_SOFTMAX,),
            },
        },
    }

    @classmethod
    def train_epochs(cls, hparams: Mapping[str, Any], recipe_epochs: int) -> int:
        """`epoch_fraction` of the backbone's epochs, at least one (module docstring)."""
        return max(1, round(hparams["epoch_fraction"] * recipe_epochs))

    def __init__(self, backbone: nn.Module, hparams: dict[str, Any], ctx: TrainContext) -> None:
        super().__init__(backbone, hparams, ctx)
        _check(hparams, ctx)
        self.num_gates = ctx.num_exits - 1
        if hparams["reinit_ics"]:
            reset_parameters(self.ics)
        backbone.requires_grad_(False)
        self.ics.requires_grad_(True)
        backbone.eval()
        gates = self.num_gates if hparams["gates"] else 0
        # The control has no gates, hence no a_l: it scores by the max softmax only.
        self.score_names = (OWN_SCORE,) if gates else ()
        self.gates = nn.ModuleList(nn.Linear(4, 1) for _ in range(gates))
        self.gate_mflops = gate_feature_flops(ctx.num_classes) / 1e6 + module_mflops(
            nn.Sequential(self.gates[0] if gates else nn.Linear(4, 1), nn.Sigmoid()),
            torch.zeros(1, 4),
        )
        costs = ctx.exit_mflops + np.cumsum(self._gate_costs())
        normalized = torch.tensor(costs / costs[-1], dtype=torch.float32)
        self.register_buffer("costs", normalized, persistent=False)
        self.warmup_epochs = min(hparams["max_warmup_epochs"], ctx.epochs - 1)
        self._register_state()
        self._handle: OptimizerHandle | None = None

    def _register_state(self) -> None:
        """Everything `end_epoch` changes, in the state_dict (checkpoints, exact resume): the
        warm-up's end, each IC's frozen flag, best val top-1, epochs without improvement
        and best weights (`best_ics`), and the gates' pos_weight."""
        g = self.num_gates
        self.register_buffer("warmup_done", torch.tensor(self.warmup_epochs == 0))
        self.register_buffer("warmup_end", torch.tensor(0))  # epochs the warm-up took
        self.register_buffer("ic_frozen", torch.zeros(g, dtype=torch.bool))
        self.register_buffer("ic_best_top1", torch.full((g,), -torch.inf))
        self.register_buffer("ic_stale_epochs", torch.zeros(g, dtype=torch.long))
        self.register_buffer("pos_weight", torch.ones(g))
        self.best_ics = copy.deepcopy(self.ics).requires_grad_(False)

    @property
    def ics(self) -> nn.ModuleList:
        """The ICs: the backbone's non-final heads (a view, so their weights are saved once)."""
        return self.backbone.heads[:-1]

    def _gate_costs(self) -> np.ndarray:
        """Per-exit MFLOPs of the gates (none at the final exit)."""
        return np.array([*[self.gate_mflops] * len(self.gates), 0.0])

    def learning_rate(self, step: int) -> float:
        """train_dynn.py's schedule: `lr` through the warm-up, then CosineAnnealingLR(T_max =
        the run's epochs, eta_min = `min_lr`) stepped after every later epoch."""
        if not bool(self.warmup_done):
            return self.hp["lr"]
        later = max(step // self.ctx.steps_per_epoch - int(self.warmup_end), 0)
        return cosine(self.hp["lr"], self.hp["min_lr"], later, self.ctx.epochs)

    # ------------------------------------------------------------------ engine hooks

    def configure(self, engine: StepEngine) -> None:
        """One SGD for ICs and gates, as released (momentum, no Nesterov, whatever the
        recipe's): each phase's loss reaches only its own parameters, and SGD skips those
        without a gradient (momentum and decay included)."""
        self._handle = engine.add_optimizer(
            "ics_and_gates",
            [*self.ics.parameters(), *self.gates.parameters()],
            lr=self.hp["lr"],
            min_lr=self.hp["min_lr"],
            weight_decay=self.hp["weight_decay"],
            family="sgd",
            schedule=self.learning_rate,
        )
        for group in self._handle.optimizer.param_groups:
            group.update(momentum=self.hp["momentum"], nesterov=False)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """None: the ICs, although backbone heads, are in the method's own optimizer."""
        return []

    def train(self, mode: bool = True) -> JeiDnn:
        """The backbone stays in eval mode; a training step puts its learning ICs in train mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    # ------------------------------------------------------------------ steps

    def phase(self, step: int) -> str:
        """Warm-up until `end_epoch` ends it; then gate and IC phases of `phase_batches`
        batches, gate first, restarting every epoch (as released)."""
        if not bool(self.warmup_done):
            return "warmup"
        if not self.gates:
            return "ic"
        batch = step % self.ctx.steps_per_epoch
        return "gate" if (batch // self.hp["phase_batches"]) % 2 == 0 else "ic"

    def _learning_ics(self, phase: str) -> list[bool]:
        if phase == "warmup":
            return [not frozen for frozen in self.ic_frozen.tolist()]
        return [phase == "ic"] * self.num_gates

    def _logits(
        self, x: torch.Tensor, learning: list[bool], engine: StepEngine
    ) -> list[torch.Tensor]:
        """Every exit's float32 logits, learning ICs in train mode and all else in eval mode.

        The others' logits are detached: in a loss, they would otherwise give their IC a zero
        gradient rather than none, and SGD would still apply momentum and decay to it.
        """
        self.backbone.eval()
        for ic, learns in zip(self.ics, learning, strict=True):
            ic.train(learns)
        with torch.set_grad_enabled(any(learning)), engine.autocast():
            logits = self.backbone(x)
        learns = [*learning, False]
        return [
            z.float() if grad else z.detach().float()
            for z, grad in zip(logits, learns, strict=True)
        ]

    def _gate_logits(self, logits: list[torch.Tensor]) -> torch.Tensor:
        """B×G gate logits of the ICs' logits."""
        gates = zip(self.gates, logits[:-1], strict=True)
        return torch.cat([gate(gate_inputs(z)) for gate, z in gates], dim=1)

    def _loss(self, phase: str, ce: torch.Tensor, logits: list[torch.Tensor]) -> torch.Tensor:
        if phase == "warmup":
            return warmup_loss(ce, self._learning_ics(phase))
        if phase == "gate":
            exits = oracle_exit(ce.detach(), self.costs, self.hp["lam"])
            targets = gate_targets(exits, self.num_gates)
            return gate_loss(self._gate_logits(logits), targets, self.pos_weight)
        if not self.gates:  # the control: the plain mean CE (the released IC loss's value)
            return ce[:, :-1].mean()
        with torch.no_grad():
            shares = exit_shares(torch.sigmoid(self._gate_logits(logits)))
        return ic_loss(ce[:, :-1], shares, self.hp["ic_weighting"] == "detached")

    def training_step(
        self, x: torch.Tensor, target: torch.Tensor, step: int, engine: StepEngine
    ) -> StepOutput:
        """One step of the run's current phase."""
        if self._handle is None:
            raise RuntimeError("jei_dnn: configure(engine) must run before training")
        phase = self.phase(step)
        logits = self._logits(x, self._learning_ics(phase), engine)
        ce = torch.stack([per_sample_cross_entropy(z, target) for z in logits], dim=1)
        loss = self._loss(phase, ce, logits)
        engine.optimize(loss, self._handle)
        weights = {f"pos_weight_exit{k + 1}": w for k, w in enumerate(self.pos_weight.tolist())}
        return StepOutput(
            loss=float(loss.detach()),
            logits=[z.detach() for z in logits],
            targets=target,
            metrics=weights,
            counts={f"{name}_steps": float(name == phase) for name in PHASES},
        )

    # ------------------------------------------------------------------ epoch end

    def end_epoch(self, epoch: int, val: SplitOutputs | None) -> None:
        """Warm-up: freeze the ICs that stopped improving on val, end the warm-up when all are
        frozen or its epochs are spent. Afterwards: pos_weight from the val oracle exits."""
        if val is None:
            raise RuntimeError("jei_dnn: end_epoch needs the val outputs of every epoch")
        if bool(self.warmup_done):
            if not self.gates:
                return
            self.pos_weight.copy_(pos_weights(self._val_oracle_exits(val), self.num_gates))
            return
        self._track_ics(val.top1()[: self.num_gates])
        if bool(self.ic_frozen.all()) or epoch + 1 >= self.warmup_epochs:
            self._end_warmup(epoch)

    def _val_oracle_exits(self, val: SplitOutputs) -> torch.Tensor:
        logits = torch.from_numpy(val.logits).float()
        labels = torch.from_numpy(val.labels).long()
        ce = torch.stack([F.cross_entropy(z, labels, reduction="none") for z in logits], dim=1)
        return oracle_exit(ce, self.costs.cpu(), self.hp["lam"])

    def _track_ics(self, top1: list[float]) -> None:
        """Keep each training IC's best weights; freeze (at them) one `patience` epochs stale."""
        for k, acc in enumerate(top1):
            if self.ic_frozen[k]:
                continue
            if acc > self.ic_best_top1[k]:
                self.ic_best_top1[k] = acc
                self.ic_stale_epochs[k] = 0
                self.best_ics[k].load_state_dict(self.ics[k].state_dict())
            else:
                self.ic_stale_epochs[k] += 1
                if self.ic_stale_epochs[k] >= self.hp["patience"]:
                    self.ics[k].load_state_dict(self.best_ics[k].state_dict())
                    self.ic_frozen[k] = True
                    best = float(self.ic_best_top1[k])
                    log.info("jei_dnn: IC %d frozen at its best val top-1, %.2f", k + 1, best)

    def _end_warmup(self, epoch: int) -> None:
        """Every IC back to its best weights, then all train again (as released)."""
        for k in range(self.num_gates):
            if not self.ic_frozen[k]:
                self.ics[k].load_state_dict(self.best_ics[k].state_dict())
        self.ic_frozen.zero_()
        self.warmup_done.fill_(True)
        self.warmup_end.fill_(epoch + 1)
        log.info("jei_dnn: warm-up over after epoch %d", epoch + 1)

    # ------------------------------------------------------------------ inference

    def exit_output(self, k: int, head: ExitOutput, memory: Memory) -> ExitOutput:
        """The head's prediction; score a_k from gate k and the earlier gates (1 at the end);
        the control's is the head's own output."""
        if not self.gates:
            return head
        if k == self.num_gates:
            a = head.logits.new_ones(head.logits.shape[0], dtype=torch.float32)
        else:
            g = torch.sigmoid(self.gates[k](gate_inputs(head.logits)))[:, 0]
            gate_sum = memory.get(GATE_SUM, torch.zeros_like(g))
            stay = memory.get(STAY, torch.ones_like(g))
            a, memory[GATE_SUM], memory[STAY] = activation_step(g, gate_sum, stay)
        return ExitOutput(head.logits, head.features, {**head.scores, OWN_SCORE: a})

    def extra_mflops(self) -> dict[str, np.ndarray]:
        """The gates' MFLOPs, under the rules that read a_l only (max softmax runs no gate)."""
        return {OWN_SCORE: self._gate_costs()} if self.gates else {}


def _check(hparams: dict[str, Any], ctx: TrainContext) -> None:
    """Values the types alone do not rule out."""
    problems = []
    if ctx.num_exits < 2:
        problems.append(f"needs at least 2 exits, got {ctx.num_exits}")
    if hparams["ic_weighting"] not in IC_WEIGHTINGS:
        problems.append(f"ic_weighting must be one of {', '.join(IC_WEIGHTINGS)}")
    for key in ("phase_batches", "patience"):
        if hparams[key] < 1:
            problems.append(f"{key} must be >= 1, got {hparams[key]}")
    if hparams["max_warmup_epochs"] < 0:
        problems.append(f"max_warmup_epochs must be >= 0, got {hparams['max_warmup_epochs']}")
    if problems:
        raise HyperparameterError("jei_dnn: " + "; ".join(problems))


@register_exit_rule
class JeiGateRule(ExitRule):
    """JEI-DNN's own inference: leave at the first exit with a_l ≥ 0.5, else the last one.
    One operating point per run; `score` (the protocol's q-thresholds on the same a_l) is
    the other curve of the same runs."""

    name: ClassVar[str] = RULE
    score: ClassVar[str] = OWN_SCORE
    draws_as: ClassVar[str] = "points"
    legend_suffix: ClassVar[str] = " (gate rule a≥0.5, a point per λ)"

    def fit(self, outputs: RunOutputs) -> list[ExitDecision]:
        """The a ≥ 0.5 decision; none for a run without gates (the heads-only control)."""
        if not self.applies_to(outputs):
            return []
        thresholds = (*[EXIT_AT] * (outputs.num_exits - 1), -np.inf)
        return [ExitDecision(self.name, 1, np.nan, self.score, thresholds)]
