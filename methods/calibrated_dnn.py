"""`calibrated_dnn`: Calibrated-DNN (Meronen et al., "Fixing overconfidence in dynamic neural
networks", WACV 2024; AaltoML/calibrated-dnn), post-hoc, spec §3.

Per exit k, on the source run's saved outputs (no backbone pass):
1. KFAC of the last layer W_k = [weight | bias] (C×(D+1)) over the saved *train* features
   φ = [features, 1]: factors U_i (C×C) and V_i ((D+1)×(D+1)) of the mean-reduced CE of each
   batch, combined by the running average ρ_i = min(1 − 1/(i+1), 0.95).
2. Each factor ×√N, the prior precision added as √(1/σ0²)·I to *each* factor, both inverted.
3. Predictive: μ = W_k φ, s = φᵀV⁻¹φ, L = chol(U⁻¹), p̂_k = (1/S) Σ_s softmax((μ + √s·L z_s)/T_k)
   with S = 50 draws z_s ~ N(0, I_C) fixed by the seed (shared by samples and exits).
4. T_k and σ0²_k from the §3 grids by val NLL: each exit alone without MIE; with MIE greedily,
   exit by exit, scoring the ensemble at k with the earlier exits at their chosen values.
5. MIE: p̄_k = Σ_{i≤k} w_i p̂_i / Σ_{i≤k} w_i, w_i = C_i / C_K (cumulative costs).
Exit k predicts argmax p̄_k; its outputs are log p̄_k, so the protocol's generic max-softmax rule
thresholds max p̄_k, the calibrated confidence that §0 prescribes for this method.

Where each part comes from:
- laplace-torch (`KronLLLaplace`, last-layer KFAC, BackPACK backend as in the code): the
  per-batch Kronecker factors (KFAC with one MC sample as BackPACK's KFAC in the code, or the
  exact GGN, KFLR, with `mc_fisher: False`) and the damped eigendecomposition (`Kron.decompose`,
  `KronDecomposed(damping=True)`: (λ_U + √δ)(λ_V + √δ), the prior added to each factor).
- this file: the running average over batches and the √N scaling (laplace-torch sums the batch
  factors to N·E[U]⊗E[V], the same product, but the prior added to each factor is not
  invariant to how N is split between them); the factor inverses read from the damped
  eigendecomposition (laplace-torch 0.3's `posterior_precision` drops `damping`:
  `KronDecomposed.__add__` and `__mul__` rebuild it without the flag); the MC predictive, the
  grid search and MIE (laplace-torch's MC predictive draws independent noise per sample and has
  no output temperature).

Paper/code vs this file:
1. KFAC data: the code makes one pass over the augmented 45k training loader (eval mode, batch
   64, shuffled); here, the `features_subset` train images that evaluate saved (test-time
   transforms), in a random order from the seed, batches of `kfac_batch_size` (64).
2. N of the √N scaling: the code uses len(train dataset) = 50,000 (val indices included); here
   the size of the training split the source run trained on (45,000 on CIFAR, its
   `train_subset` where one is set; saved with its features), unless `n_data` > 0 sets it.
   Not the number of saved train images the factors are averaged over: those are a subset
   (`features_subset`), and N scales the posterior, not the average.
3. Randomness: the code draws new z at every call, so the grid points, val and test see
   different noise; here z comes once from the seed (and the MC-Fisher draws are seeded too).
4. Grid ties: the code crashes on several maxima; here the first in grid order (T, then σ0²).
5. MIE weights: the source run's cumulative MFLOPs (this suite's fvcore counter), not the code's
   op_counter; the weights of exits whose run costs include a method's extras include them too.
6. Outputs are log p̄ clamped at float32's smallest normal (a probability that underflows to 0
   would otherwise give −inf logits); the code thresholds max p̄ directly.
7. μ is recomputed as W φ from the saved classifier (the layer the KFAC is of), not read from
   the source run's logits (equal for a plain head, up to float rounding).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from eebench.methods.base import (
    MAX_SOFTMAX,
    POSTHOC_FIGURES,
    Display,
    ExitOutput,
    Memory,
    PostHocMethod,
    register_posthoc_method,
)
from eebench.pipelines.evaluation.outputs import RunOutputs

log = logging.getLogger(__name__)
#: Laplace algebra (factors, inverses, Cholesky) in float64; the MC softmaxes, by far the
#: most work (S·C per sample and grid point), in float32 (2.7× faster on CPU).
DTYPE = torch.float64
MC_DTYPE = torch.float32
#: §3: the code's grids (adaptive_inference.py, --optimize_temperature / --optimize_var0).
TEMPERATURES = [0.3, 0.5, 0.7, 1.0, 1.3, 1.5, 1.7, 2.0, 2.5, 3.0]
PRIOR_VARIANCES = [0.5, 0.7, 1.0, 1.3, 1.5, 1.7, 2.0, 2.5, 3.0, 4.0]
#: §3: the running average's ρ_i = min(1 − 1/(i+1), RHO_MAX).
RHO_MAX = 0.95
#: Floor of p̄ before the log: float32's smallest normal, so saved logits stay finite.
TINY = torch.finfo(torch.float32).tiny
#: Elements of one MC block (samples × draws × classes) kept in memory at once.
BLOCK_ELEMENTS = 1 << 23
FIGURES = (*POSTHOC_FIGURES, "fig_reliability")


# --------------------------------------------------------------------------- KFAC (laplace-torch)


def augment(features: Tensor) -> Tensor:
    """φ = [features, 1]: the bias is the last column of W (as in the code's laplace.py)."""
    ones = torch.ones(features.shape[0], 1, dtype=features.dtype, device=features.device)
    return torch.cat([features, ones], dim=1)


def last_layer_laplace(weight: Tensor, mc_fisher: bool) -> Any:
    """laplace-torch's last-layer KFAC Laplace of a bias-free Linear with weight [W | b] on
    φ, BackPACK backend (the code's library); its curvature backend gives the batch factors
    (the damped posterior is built by `damped_precision`)."""
    with warnings.catch_warnings():  # a dependency's torch.jit deprecation notice on import
        warnings.simplefilter("ignore", FutureWarning)
        from laplace import Laplace
        from laplace.curvature import BackPackGGN

    classes, inputs = weight.shape
    layer = torch.nn.Linear(inputs, classes, bias=False).to(weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return Laplace(
        torch.nn.Sequential(layer),
        "classification",
        subset_of_weights="last_layer",
        hessian_structure="kron",
        backend=BackPackGGN,
        backend_kwargs={"stochastic": mc_fisher},
        last_layer_name="0",
        damping=True,
    )


def batch_factors(laplace: Any, phi: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(U_i, V_i) of one batch of the *mean*-reduced CE, as BackPACK's KFAC gives them in the
    code: laplace-torch sums the loss (U summed over the batch) and, with N = batch size,
    leaves V the batch mean φφᵀ/M; so U_i = U / M."""
    with warnings.catch_warnings():
        # BackPACK's hooks on a layer whose input needs no gradient: expected, harmless.
        warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
        _, kron = laplace.backend.kron(phi, labels, N=len(labels))
    u, v = kron.kfacs[0]
    return u / len(labels), v


def running_average(factors: Iterable[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """§3: U ← ρ_i U + (1 − ρ_i) U_i with ρ_i = min(1 − 1/(i+1), 0.95) (i from 0): the exact
    mean of the first 20 batches, then an exponential average of the later ones."""
    u_avg = v_avg = None
    for i, (u, v) in enumerate(factors):
        rho = min(1.0 - 1.0 / (i + 1), RHO_MAX)
        u_avg = u if u_avg is None else rho * u_avg + (1.0 - rho) * u
        v_avg = v if v_avg is None else rho * v_avg + (1.0 - rho) * v
    if u_avg is None or v_avg is None:
        raise ValueError("KFAC needs at least one train sample")
    return u_avg, v_avg


def kfac_factors(
    phi: Tensor,
    labels: Tensor,
    weight: Tensor,
    *,
    batch_size: int,
    mc_fisher: bool,
    seed: int,
) -> tuple[Tensor, Tensor]:
    """Running-average KFAC factors (U, V) of the last layer over (φ, labels), batches in a
    random order from `seed` (the code's shuffled loader); the MC-Fisher draws are seeded."""
    laplace = last_layer_laplace(weight, mc_fisher)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    batches = order.split(batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return running_average(batch_factors(laplace, phi[b], labels[b]) for b in batches)


def posterior_factors(
    u: Tensor, v: Tensor, n_data: int, prior_variance: float
) -> tuple[Tensor, Tensor]:
    """(U_post⁻¹, V_post⁻¹) = ((√N U + √δ I)⁻¹, (√N V + √δ I)⁻¹), δ = 1/σ0² (§3): the posterior
    covariance is their Kronecker product. Built on laplace-torch's damped decomposition."""
    decomposed = damped_precision(u, v, n_data, prior_variance)
    (q_u, q_v), (l_u, l_v) = decomposed.eigenvectors[0], decomposed.eigenvalues[0]
    root = torch.sqrt(decomposed.deltas[0])
    return (q_u / (l_u + root)) @ q_u.T, (q_v / (l_v + root)) @ q_v.T


def damped_precision(u: Tensor, v: Tensor, n_data: int, prior_variance: float) -> Any:
    """laplace-torch's `KronDecomposed` of the posterior precision (√N U + √δ I)⊗(√N V + √δ I)
    (its `to_matrix(-1)` is the dense posterior covariance)."""
    from laplace.utils import Kron, KronDecomposed

    root_n = math.sqrt(n_data)
    decomposed = Kron([[root_n * u, root_n * v]]).decompose(damping=True)
    delta = torch.tensor([1.0 / prior_variance], dtype=u.dtype)
    return KronDecomposed(decomposed.eigenvectors, decomposed.eigenvalues, delta, damping=True)


# --------------------------------------------------------------------------- predictive


def logit_noise(u_inv: Tensor, z: Tensor) -> Tensor:
    """The S×C draws L z_s, L = chol(U_post⁻¹): the logit noise of a sample with s = 1."""
    return z @ torch.linalg.cholesky(u_inv).T


def variance_scale(phi: Tensor, v_inv: Tensor) -> Tensor:
    """s = φᵀ V_post⁻¹ φ per sample (B): the logit covariance is s · U_post⁻¹."""
    return ((phi @ v_inv) * phi).sum(dim=1).clamp_min(0.0)


def mc_predictive(mu: Tensor, s: Tensor, noise: Tensor, temperature: float) -> Tensor:
    """p̂ = (1/S) Σ_s softmax((μ + √s · noise_s) / T) (B×C, float32), in blocks of samples."""
    mu, s, noise = mu.to(MC_DTYPE), s.to(MC_DTYPE), noise.to(MC_DTYPE)
    draws, classes = noise.shape
    block = max(1, BLOCK_ELEMENTS // (draws * classes))
    out = []
    for start in range(0, mu.shape[0], block):
        m, r = mu[start : start + block], s[start : start + block].sqrt()
        logits = (m[:, None, :] + r[:, None, None] * noise[None]) / temperature
        out.append(torch.softmax(logits, dim=-1).mean(dim=1))
    return torch.cat(out) if out else mu.new_zeros(mu.shape)


def mie_weights(flops: np.ndarray) -> Tensor:
    """§3: w_i = C_i / C_K, from the cumulative costs of the exits."""
    costs = torch.as_tensor(np.asarray(flops, dtype=np.float64), dtype=DTYPE)
    return costs / costs[-1]


def nll(probs: Tensor, labels: Tensor) -> float:
    """Mean −log p[y] (the floor keeps a zero probability finite)."""
    picked = probs.gather(1, labels[:, None]).squeeze(1)
    return float(-picked.clamp_min(TINY).log().mean())


def first_minimum(table: Tensor) -> tuple[int, int]:
    """(row, column) of the smallest entry, the first in row-major order on ties (§3's grid
    order: temperature, then prior variance)."""
    flat = int(torch.argmin(table.flatten()))  # argmin returns the first minimum
    return divmod(flat, table.shape[1])


# --------------------------------------------------------------------------- method


@register_posthoc_method
class CalibratedDNN(PostHocMethod):
    """Last-layer Laplace per exit + model-internal ensembling (spec §3); see the module."""

    name: ClassVar[str] = "calibrated_dnn"
    needs: ClassVar[frozenset[str]] = frozenset({"features", "classifiers"})
    code_version: ClassVar[str] = "2"
    hparams: ClassVar[dict[str, Any]] = {
        "n_mc_samples": 50,
        "temperatures": list(TEMPERATURES),
        "prior_variances": list(PRIOR_VARIANCES),
        "mie": True,
        "kfac_batch_size": 64,
        "n_data": 0,  # N of the √N scaling; 0: the source run's training-split size
        "mc_fisher": True,  # BackPACK's KFAC (one MC sample) as the code; False: exact GGN
    }
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        "no_mie": {
            "hparams": {"mie": False},
            "display": {
                "label": "Calibrated-DNN (no MIE)",
                "color": "#0b6e79",
                "marker": "^",
                "figures": FIGURES,
            },
        },
    }
    # The predictive's max is the calibrated confidence: the generic max-softmax rule reads it.
    display: ClassVar[Display] = Display(
        "Calibrated-DNN", "#17becf", "v", figures=FIGURES, main_rule=MAX_SOFTMAX
    )

    # ------------------------------------------------------------------ fit

    def fit(self, outputs: RunOutputs) -> None:
        """KFAC on the train features, then T and σ0² per exit on val (test is never read)."""
        train, classifiers = outputs.train, outputs.classifiers
        if train is None or train.features is None or classifiers is None:
            raise ValueError(
                "calibrated_dnn needs the source run's train features and classifiers "
                "(evaluate it with features and a features_subset > 0)"
            )
        if outputs.val.features is None:
            raise ValueError("calibrated_dnn needs the source run's val features")
        weights = mie_weights(outputs.flops)
        num_classes = classifiers[0][0].shape[0]
        generator = torch.Generator().manual_seed(self.seed)
        z = torch.randn(self.hp["n_mc_samples"], num_classes, generator=generator, dtype=DTYPE)
        n_data = self.hp["n_data"] or outputs.n_train
        if not n_data:
            raise ValueError(
                "calibrated_dnn: the source run's features.npz does not record its training-"
                "split size (older eebench): evaluate the source run again"
            )
        labels = torch.from_numpy(outputs.val.labels)
        ensemble = torch.zeros(len(labels), num_classes, dtype=DTYPE)  # Σ_{i<k} w_i p̂_i
        chosen = []
        for k in range(outputs.num_exits):
            weight = self._mean(classifiers[k])
            u, v = kfac_factors(
                augment(torch.from_numpy(train.features[k]).to(DTYPE)),
                torch.from_numpy(train.labels),
                weight,
                batch_size=self.hp["kfac_batch_size"],
                mc_fisher=self.hp["mc_fisher"],
                seed=self.seed + k,
            )
            # p̄_k = Σ_{i<k} w_i p̂_i / W_k + (w_k / W_k) p̂_k with MIE, p̂_k alone without.
            total = weights[: k + 1].sum()
            base, share = (ensemble / total, weights[k] / total) if self.hp["mie"] else (0.0, 1.0)
            phi = augment(torch.from_numpy(outputs.val.features[k]).to(DTYPE))
            t, var, v_inv, noise, probs = self._choose(
                phi, weight, (u, v, n_data), z, labels, base, share
            )
            ensemble = ensemble + weights[k] * probs
            chosen.append((t, var))
            self.register_buffer(f"mean_{k}", weight)
            self.register_buffer(f"v_inv_{k}", v_inv)
            self.register_buffer(f"noise_{k}", noise)
        for k, (t, var) in enumerate(chosen):
            log.info(
                "calibrated_dnn: exit %d: N = %d, temperature %g, prior variance %g, %s",
                k + 1, n_data, t, var, f"MIE over exits 1-{k + 1}" if self.hp["mie"] else "no MIE",
            )  # fmt: skip
        self.register_buffer("n_data", torch.tensor(n_data, dtype=torch.int64))
        self.register_buffer("temperature", torch.tensor([t for t, _ in chosen], dtype=DTYPE))
        self.register_buffer("prior_variance", torch.tensor([v for _, v in chosen], dtype=DTYPE))
        self.register_buffer("mie_weights", weights)

    @staticmethod
    def _mean(classifier: tuple[np.ndarray, np.ndarray]) -> Tensor:
        """The MAP mean [W | b] (C×(D+1)) of the exit's final Linear."""
        weight, bias = (torch.from_numpy(np.asarray(a)).to(DTYPE) for a in classifier)
        return torch.cat([weight, bias[:, None]], dim=1)

    def _choose(
        self,
        phi: Tensor,
        weight: Tensor,
        kfac: tuple[Tensor, Tensor, int],
        z: Tensor,
        labels: Tensor,
        base: Tensor | float,
        share: Tensor | float,
    ) -> tuple[float, float, Tensor, Tensor, Tensor]:
        """The grid point of least val NLL of base + share·p̂_k (§3), with its V⁻¹, logit noise
        and p̂_k. `kfac` = (U, V, N): the running-average factors and N of the √N scaling."""
        u, v, n_data = kfac
        mu = phi @ weight.T
        temps, variances = self.hp["temperatures"], self.hp["prior_variances"]
        table = torch.empty(len(temps), len(variances), dtype=DTYPE)
        pieces = []
        for j, variance in enumerate(variances):
            u_inv, v_inv = posterior_factors(u, v, n_data, variance)
            noise, s = logit_noise(u_inv, z), variance_scale(phi, v_inv)
            pieces.append((v_inv, noise, s))
            for i, t in enumerate(temps):
                table[i, j] = nll(base + share * mc_predictive(mu, s, noise, t), labels)
        i, j = first_minimum(table)
        v_inv, noise, s = pieces[j]
        probs = mc_predictive(mu, s, noise, temps[i])
        return float(temps[i]), float(variances[j]), v_inv, noise, probs

    def fit_report(self) -> dict[str, Any]:
        """N of the √N scaling, and per exit the chosen T and σ0² and the exits it ensembles."""
        mie = self.hp["mie"]
        return {
            "n_data": int(self.n_data),
            "exits": [
                {
                    "exit": k + 1,
                    "temperature": float(self.temperature[k]),
                    "prior_variance": float(self.prior_variance[k]),
                    "mie_exits": list(range(1, k + 2)) if mie else [k + 1],
                }
                for k in range(self.num_exits)
            ],
        }

    # ------------------------------------------------------------------ inference

    def exit_output(self, k: int, head: ExitOutput, memory: Memory) -> ExitOutput:
        """log p̄_k (or log p̂_k without MIE): argmax = prediction, max softmax = max p̄_k."""
        probs = self.exit_predictive(k, head.features)
        if self.hp["mie"]:
            weighted = self.mie_weights[k] * probs
            memory["mie"] = memory["mie"] + weighted if k else weighted  # Σ_{i≤k} w_i p̂_i
            probs = memory["mie"] / self.mie_weights[: k + 1].sum()
        log_probs = probs.clamp_min(TINY).log()
        return ExitOutput(log_probs.to(head.logits), head.features)

    def exit_predictive(self, k: int, features: Tensor) -> Tensor:
        """p̂_k of exit k's own Laplace predictive (B×C), from its head's features."""
        mean = getattr(self, f"mean_{k}")
        phi = augment(features.to(device=mean.device, dtype=mean.dtype))
        s = variance_scale(phi, getattr(self, f"v_inv_{k}"))
        noise, temperature = getattr(self, f"noise_{k}"), float(self.temperature[k])
        return mc_predictive(phi @ mean.T, s, noise, temperature)

    def extra_mflops(self) -> dict[str, np.ndarray]:
        """Per-exit cost of the calibrated prediction beyond the head's own logits (μ = Wφ is
        the head's Linear, already counted). Counted as multiply-accumulates, every elementwise
        operation as one (fvcore would count only the matrix products, so this is an upper
        estimate): s = φᵀV⁻¹φ, (D+1)² + (D+1); per MC draw and class the noise √s·Lz added to μ,
        the 1/T scale, exp and the normalised accumulation, 4·S·C (the draws L z_s are fixed,
        precomputed at fit time); MIE, 2·C per exit (weighted add, normalisation)."""
        if not hasattr(self, "temperature"):
            return {}
        draws = self.hp["n_mc_samples"]
        costs = []
        for k in range(self.num_exits):
            classes, inputs = getattr(self, f"mean_{k}").shape
            macs = inputs * inputs + inputs + 4 * draws * classes
            macs += 2 * classes if self.hp["mie"] else 0
            costs.append(macs / 1e6)
        return {"predict": np.asarray(costs, dtype=np.float64)}
