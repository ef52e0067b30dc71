"""`pipelines/training/budgeted.py`: the batch's budgeted exits are the protocol's, ties
included, and the budgeted loss averages each exit's CE over its own samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eebench.pipelines.evaluation import protocol
from eebench.pipelines.evaluation.protocol import exit_counts
from eebench.pipelines.training.budgeted import budgeted_exits, budgeted_loss

#: Confidences (samples × exits) with ties at both thresholds; the comments give the exits.
TIED = torch.tensor(
    [
        [0.9, 0.95, 0.5],  # exit 1: the top 3 are 0.9, 0.8, 0.8, so T_1 = 0.8 ...
        [0.8, 0.95, 0.5],  # ... and every 0.8 leaves: 4 samples instead of n_1 = 3
        [0.8, 0.95, 0.5],
        [0.8, 0.95, 0.5],  # their 0.95 at exit 2 must not count: they have left
        [0.3, 0.6, 0.5],  # exit 2 ranks the 4 left: 0.6, 0.6, 0.6, 0.4; n_2 = 2, T_2 = 0.6
        [0.2, 0.6, 0.5],  # ... so three leave at exit 2
        [0.1, 0.6, 0.5],
        [0.5, 0.4, 0.5],  # the last one leaves at exit 3
    ],
    dtype=torch.float64,
)


def test_meta_exits_are_the_protocols_at_the_target_proportions_with_ties() -> None:
    proportions = protocol.exit_proportions(15 / 20, 3)  # q = 0.75, the default target
    counts = exit_counts(8, proportions)
    # prop = 0.75^k / Σ: 0.432, 0.324, 0.243 of 8 samples, floored.
    assert counts.tolist() == [3, 2, 1]
    exits = budgeted_exits(TIED, counts)
    assert exits.tolist() == [0, 0, 0, 0, 1, 1, 1, 2]
    scores = TIED.T.numpy()
    thresholds = protocol.fit_thresholds_reference(scores, proportions[None])
    assert protocol.assign_exits_reference(scores, thresholds)[0].tolist() == exits.tolist()


@pytest.mark.parametrize("seed", range(5))
def test_meta_exits_agree_with_the_protocol_loop_on_random_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_exits, n = int(rng.integers(2, 6)), int(rng.integers(5, 40))
    scores = rng.integers(0, 6, size=(num_exits, n)) / 5.0  # few values: many ties
    for p in (1, 7, 15, 20, 33):
        proportions = protocol.exit_proportions(p / 20, num_exits)
        thresholds = protocol.fit_thresholds_reference(scores, proportions[None])
        expected = protocol.assign_exits_reference(scores, thresholds)[0]
        got = budgeted_exits(torch.from_numpy(scores.T.copy()), exit_counts(n, proportions))
        assert got.tolist() == expected.tolist(), (seed, p)


def test_meta_loss_is_the_mean_ce_of_each_exits_samples_summed_over_exits() -> None:
    ce = torch.arange(24, dtype=torch.float64).reshape(8, 3) / 10
    exits = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2])
    expected = ce[:4, 0].mean() + ce[4:7, 1].mean() + ce[7, 2]
    torch.testing.assert_close(budgeted_loss(ce, exits), expected)
    no_middle = torch.tensor([0, 0, 2, 2, 2, 2, 2, 2])  # an exit without samples adds nothing
    torch.testing.assert_close(budgeted_loss(ce, no_middle), ce[:2, 0].mean() + ce[2:, 2].mean())
