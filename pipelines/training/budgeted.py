"""The budgeted protocol (docs/protocol.md, step 2) on a training batch, in torch.

Why: a train-time objective that imitates budgeted inference (which samples would leave at
which exit for given target proportions, and the loss they would incur there) must pick
the exits exactly as evaluation does, ties included, on the device and without a host
sync. `pipelines.evaluation.protocol` is the numpy reference these agree with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def budgeted_exits(conf: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """Exit index (B,) of each sample under the budgeted protocol fitted on these scores.

    docs/protocol.md step 2 on the batch itself: for k < K−1 the threshold T_k is
    the n_k-th largest score among samples not yet assigned (+inf when n_k = 0 or fewer
    remain) and every such sample with conf_k ≥ T_k leaves at k (ties all go); the rest
    leave at the last exit. On the device, without a host sync.
    """
    batch, num_exits = conf.shape
    remaining = torch.ones(batch, dtype=torch.bool, device=conf.device)
    exits = torch.full((batch,), num_exits - 1, dtype=torch.long, device=conf.device)
    for k in range(num_exits - 1):
        n_k = int(counts[k])
        if n_k == 0:
            continue
        ranked = torch.where(remaining, conf[:, k], -torch.inf)
        nth = ranked.topk(n_k).values[n_k - 1]
        threshold = torch.where(remaining.sum() >= n_k, nth, torch.inf)
        leave = remaining & (conf[:, k] >= threshold)
        exits = exits.masked_fill(leave, k)
        remaining = remaining & ~leave
    return exits


def budgeted_loss(ce: torch.Tensor, exits: torch.Tensor) -> torch.Tensor:
    """Σ_k mean CE over the samples assigned to exit k; exits without samples add nothing.
    `where`, not a product, so that an unselected CE never matters."""
    chosen = exits[:, None] == torch.arange(ce.shape[1], device=ce.device)
    totals = torch.where(chosen, ce, torch.zeros_like(ce)).sum(dim=0)
    return (totals / chosen.sum(dim=0).clamp(min=1)).sum()
