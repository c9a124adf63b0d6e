"""The epoch order is part of the resume contract: a saved ``state_dict()`` names only (seed, epoch,
samples yielded), so the permutation for a given (n, seed, epoch) must never change between
releases. These golden lists are the ones sampler.rs's ``pinned_stream`` pins in Rust; a change to
the shuffle (SplitMix64, the epoch seed, the bounded draw or the Fisher-Yates loop) fails here too."""

from __future__ import annotations

import pytest

from s3dlio._core import epoch_indices

GOLDEN: dict[tuple[int, int, int], list[int]] = {
    (8, 42, 0): [1, 4, 5, 6, 3, 7, 0, 2],
    (8, 42, 1): [3, 1, 0, 5, 2, 6, 4, 7],
    (20, 0, 3): [13, 17, 12, 18, 6, 2, 15, 1, 7, 9, 10, 3, 16, 5, 8, 19, 11, 14, 4, 0],
}


@pytest.mark.parametrize(("n", "seed", "epoch"), list(GOLDEN))
def test_epoch_order_is_pinned(n: int, seed: int, epoch: int) -> None:
    """The shuffled order of (n, seed, epoch) is exactly the golden list (the same in Rust)."""
    assert epoch_indices(n, seed, epoch, True) == GOLDEN[(n, seed, epoch)]


def test_large_epoch_order_prefix_is_pinned() -> None:
    """The first ten positions of a 1,000-sample shuffle (seed 7, epoch 0) are pinned, and the
    whole order is a permutation of 0..999."""
    order = epoch_indices(1000, 7, 0, True)
    assert order[:10] == [242, 705, 715, 683, 362, 277, 561, 435, 307, 283]
    assert sorted(order) == list(range(1000))


def test_unshuffled_order_is_the_identity() -> None:
    """shuffle=False gives 0..n-1 whatever the seed and epoch."""
    assert epoch_indices(8, 42, 5, False) == list(range(8))


def test_rank_and_worker_shares_follow_the_pinned_order() -> None:
    """The rank share (DistributedSampler-style, padded) and the worker share (round-robin) are
    slices of the pinned order, so resuming a sharded run depends only on the golden list:
    order [1, 4, 5, 6, 3, 7, 0, 2] -> rank 1 of 3 (padded to 9 by repeating the start) takes
    positions 1, 4, 7; worker 1 of 2 within rank 0 (positions 0, 3, 6) takes position 3."""
    order = GOLDEN[(8, 42, 0)]
    assert epoch_indices(8, 42, 0, True, rank=1, world_size=3) == [order[1], order[4], order[7]]
    assert epoch_indices(8, 42, 0, True, rank=2, world_size=3) == [order[2], order[5], order[0]]
    assert epoch_indices(8, 42, 0, True, rank=0, world_size=3, worker=1, num_workers=2) == [order[3]]
    assert epoch_indices(8, 42, 0, True, rank=1, world_size=3, even="drop") == [order[1], order[4]]
