"""Rank mode of ``misical select``: score every candidate patch of the pool once, keep the best B.

Every policy scores candidate rows in sets of K (:meth:`CandidatePolicy.scores`), and some
read the set as a whole: the DDQN's DeepSets network pools a context over it, and an SB3 MLP
takes exactly K rows. Ranking therefore deals the candidates into random sets of ``pool_size``
(seeded), scores every set once, in large batches, and sorts the patches by their own score.
Each row is built as at the start of an episode (``budget_left`` 1). The oracle, which reads
counts, not rows, ranks by the target's true pixel count: the upper bound.
"""

from __future__ import annotations

import numpy as np

from misical_gym.agents.heuristics import HeuristicPolicy
from misical_gym.agents.policy import CandidatePolicy
from misical_gym.envs.core import ObservationBuilder
from misical_gym.store import FeatureStore

BATCH_PATCHES = 1 << 12
"""Patches scored per policy call: enough to amortise the call, few enough that a network's
activations stay in cache (a third faster than 32,768 per call for the DDQN on one thread)."""


def rank_scores(
    policy: CandidatePolicy,
    builder: ObservationBuilder,
    candidates: np.ndarray,
    target: int,
    *,
    pool_size: int,
    seed: int,
) -> np.ndarray:
    """The policy's score of every patch in ``candidates`` (store ids), in their order.

    Args:
        policy: Scores rows ``[B, pool_size, F]``.
        builder: Builds the rows the policy reads (the pool env's, so goal-conditioned policies
            get their one-hot).
        candidates: int64 store ids.
        target: The target class index.
        pool_size: Patches per scored set (the K the policy sees).
        seed: Deals the patches into sets.
    """
    ids = np.asarray(candidates, dtype=np.int64)
    if isinstance(policy, HeuristicPolicy) and policy.name == "oracle":
        return np.asarray(builder.store.counts[ids, target], dtype=np.float64)
    order = np.random.default_rng(seed).permutation(ids.size)
    sets = -(-ids.size // pool_size)
    flat = np.full(sets * pool_size, -1, dtype=np.int64)  # the last set's empty slots: -1
    flat[: ids.size] = ids[order]
    dealt = flat.reshape(sets, pool_size)
    scores = np.empty(dealt.shape, dtype=np.float64)
    per_call = max(1, BATCH_PATCHES // pool_size)
    for start in range(0, sets, per_call):
        block = dealt[start : start + per_call]
        rows = builder.build(block, target, 1.0, may_have_empty=start + per_call >= sets)
        scores[start : start + per_call] = np.asarray(policy.scores(rows))
    out = np.empty(ids.size, dtype=np.float64)
    out[order] = scores.reshape(-1)[: ids.size]
    return out


def best_patches(
    store: FeatureStore,
    candidates: np.ndarray,
    scores: np.ndarray,
    budget: int,
    *,
    max_per_image: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Positions in ``candidates`` of the ``budget`` best scores, best first.

    Exact ties are broken in a seeded random order. With ``max_per_image`` an image gives at
    most that many patches; its others make room for the next images' best.
    """
    ids = np.asarray(candidates, dtype=np.int64)
    shuffle = np.random.default_rng(seed).permutation(ids.size)
    # A stable sort of the shuffled scores: ties keep the seeded random order.
    order = shuffle[np.argsort(-np.asarray(scores)[shuffle], kind="stable")]
    if max_per_image is not None:
        images = np.asarray(store.patches[ids[order], 0], dtype=np.int64)
        by_image = np.argsort(images, kind="stable")  # rank order kept inside each image
        sorted_images = images[by_image]
        first = np.searchsorted(sorted_images, sorted_images, side="left")
        rank_in_image = np.empty(ids.size, dtype=np.int64)
        rank_in_image[by_image] = np.arange(ids.size) - first
        order = order[rank_in_image < max_per_image]
    return order[:budget]
