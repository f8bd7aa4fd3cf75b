"""The evaluation's jobs as data: what to run, the digest that names its result, and running it.

A :class:`Job` is one (target, policy, seed) selection with everything that determines its row:
the store's fingerprint, the budget, the candidates per pick, the select mode, the training
steps and, for learned policies, the resolved hyperparameters. Its :attr:`Job.digest` keys the
job file, so a resumed evaluation reuses a row only when every one of those is the same.
:func:`run_job` turns a job into its row; the executors only map jobs to rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from misical_gym.agents.policy import CandidatePolicy
from misical_gym.atomic import file_lock
from misical_gym.paths import safe_name
from misical_gym.train.agents import AGENTS, HEURISTIC_AGENTS, load_hyperparams

if TYPE_CHECKING:
    from misical_gym.store import FeatureStore

GOAL_SUFFIX = "-goal"
"""``<agent>-goal`` names one goal-conditioned policy per seed (trained with a new random target
every episode) that serves every target, beside the paper's one policy per target."""

JOB_FORMAT = 2
"""Version of the job files; files of another version are run again."""

RETRAINING_FIELDS = (
    "retrain_epochs",
    "retrain_learning_rate",
    "retrain_weighting",
    "retrain_weights_from",
)
"""The :class:`Job` fields that say how a job fine-tunes the segmenter (not in its digest)."""
_LEGACY_RETRAINING = {
    "retrain_learning_rate": 3e-3,
    "retrain_weighting": "inverse",
    "retrain_weights_from": "crops",
}
"""How the rows written before these settings existed were fine-tuned."""


def policy_agent(policy: str) -> tuple[str, bool]:
    """The agent a policy name trains, and whether it is goal-conditioned."""
    if policy.endswith(GOAL_SUFFIX):
        agent = policy[: -len(GOAL_SUFFIX)]
        if agent in AGENTS and agent not in HEURISTIC_AGENTS:
            return agent, True
    if policy not in AGENTS:
        learned = [a for a in AGENTS if a not in HEURISTIC_AGENTS]
        raise ValueError(
            f"unknown policy {policy!r}; choose from {', '.join(AGENTS)}, or a learned agent "
            f"with {GOAL_SUFFIX!r} for one goal-conditioned policy ({', '.join(learned)})"
        )
    return policy, False


@dataclass(frozen=True)
class Job:
    """One (target, policy, seed) selection and everything that determines its result."""

    store: str
    """Absolute path of the store (every executor's worker opens it itself)."""
    store_fingerprint: str
    """:attr:`~misical_gym.store.FeatureStore.fingerprint` of that store."""
    target: str
    target_id: int
    policy: str
    seed: int
    budget: int
    pool_size: int
    pretrain_steps: int
    online_steps: int
    retrain: bool
    retrain_epochs: int | None
    cache: str
    """Absolute path of the training cache (shared by jobs that train the same policy)."""
    select_mode: str = "episode"
    """How the policy selects: ``episode`` (the paper's protocol) or ``rank`` (the best B of
    the whole pool); see :func:`~misical_gym.train.select.select_patches`."""
    hyperparams: str = ""
    """JSON object of hyperparameters set over the agent's packaged ones (``misical sweep``'s
    grid point); empty: none."""
    env_kwargs: str = ""
    """JSON object of environment arguments (``misical sweep --env-grid``: the reward scheme,
    ``features``...), used in training, in selection (``features``) and for the row's
    ``reward``; empty: the defaults."""
    retrain_learning_rate: float | None = None
    """The fine-tuning's learning rate when :attr:`retrain` (resolved: never None then)."""
    retrain_weighting: str | None = None
    """The fine-tuning's class weighting when :attr:`retrain` (resolved: never None then)."""
    retrain_weights_from: str | None = None
    """The labels the fine-tuning's class weights come from when :attr:`retrain` (``crops`` or
    ``init``; resolved: never None then)."""

    @classmethod
    def encode(cls, settings: dict[str, Any]) -> str:
        """``settings`` as a :attr:`hyperparams` or :attr:`env_kwargs` value (canonical JSON)."""
        return json.dumps(settings, sort_keys=True) if settings else ""

    @property
    def overrides(self) -> dict[str, Any]:
        """:attr:`hyperparams` decoded."""
        return json.loads(self.hyperparams) if self.hyperparams else {}

    @property
    def env_settings(self) -> dict[str, Any]:
        """:attr:`env_kwargs` decoded."""
        return json.loads(self.env_kwargs) if self.env_kwargs else {}

    @property
    def agent(self) -> str:
        return policy_agent(self.policy)[0]

    @property
    def goal_conditioned(self) -> bool:
        return policy_agent(self.policy)[1]

    @property
    def learned(self) -> bool:
        return self.agent not in HEURISTIC_AGENTS

    def training(self) -> dict[str, Any]:
        """What the trained policy depends on (jobs of every target share a goal policy)."""
        hyperparams = {**load_hyperparams(self.agent, "MiSiCAL-Store", None), **self.overrides}
        if not self.goal_conditioned:  # a one-target policy never builds the goal network
            hyperparams.pop("goal_policy_kwargs", None)
        return {
            "agent": self.agent,
            "store_fingerprint": self.store_fingerprint,
            "target": "random" if self.goal_conditioned else self.target,
            "seed": self.seed,
            "pretrain_steps": self.pretrain_steps,
            "online_steps": self.online_steps,
            "pool_size": self.pool_size,
            "hyperparams": hyperparams,
            # Only when set: the training digests of the evaluations before sweeps stay.
            **({"env_kwargs": self.env_settings} if self.env_kwargs else {}),
        }

    @property
    def digest(self) -> str:
        """A digest of everything that determines the job's selection (not where files live,
        nor the retraining: a row records its own :meth:`retraining`, see :meth:`answered_by`)."""
        fields = dataclasses.asdict(self)
        for name in ("store", "cache", "retrain", *RETRAINING_FIELDS):
            del fields[name]
        if self.select_mode == "episode":
            del fields["select_mode"]  # the jobs of before rank mode keep their digests
        for name in ("hyperparams", "env_kwargs"):  # nor those of before sweeps
            if not fields[name]:
                del fields[name]
        if self.learned:
            fields["training"] = self.training()
        return _digest({"format": JOB_FORMAT, **fields})

    def answered_by(self, record: Any) -> dict[str, Any] | None:
        """This job's row from a job file's ``record``, or None when the file answers another
        job: another configuration, or no IoU measured with this job's :meth:`retraining`. A
        row with an IoU also answers the same job without retraining, its IoU left out."""
        if not isinstance(record, dict) or record.get("digest") != self.digest:
            return None
        row = record.get("row")
        if not isinstance(row, dict):
            return None
        if self.retrain:
            same = all(
                row.get(name, _LEGACY_RETRAINING.get(name)) == value
                for name, value in self.retraining().items()
            )
            return row if same else None
        return {**row, "iou": None}

    def retraining(self) -> dict[str, Any]:
        """The fine-tuning settings, as its row records them (all None without retraining)."""
        if not self.retrain:
            return dict.fromkeys(RETRAINING_FIELDS)
        return {name: getattr(self, name) for name in RETRAINING_FIELDS}

    @property
    def file_name(self) -> str:
        """The job file's name: the class index keeps sanitised names apart (``a b``, ``a_b``),
        and the digest the points of a sweep."""
        point = f"__{self.digest}" if self.hyperparams or self.env_kwargs else ""
        return (
            f"{self.target_id:03d}-{safe_name(self.target)}__{self.policy}__{self.seed}{point}.json"
        )


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def longest_first(jobs: list[Job]) -> list[Job]:
    """The jobs that train a policy first, then those that reuse one, then the heuristics.

    A worker that takes a long training last leaves the others idle at the end; and the jobs
    that share a goal-conditioned policy would wait on the one that trains it. The order
    changes no result: every job is seeded on its own.
    """
    trained: set[tuple[str, int]] = set()

    def rank(job: Job) -> int:
        if not job.learned:
            return 2
        if job.goal_conditioned:
            if (job.agent, job.seed) in trained:
                return 1
            trained.add((job.agent, job.seed))
        return 0

    ranks = [rank(job) for job in jobs]  # in order: the first job of a goal policy trains it
    return [jobs[i] for i in sorted(range(len(jobs)), key=ranks.__getitem__)]  # stable


@contextlib.contextmanager
def _training_lock(cache: Path) -> Iterator[None]:
    """One trainer per cached configuration: the jobs of every target share a goal-conditioned
    policy and may start at once, in other processes."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(cache.with_suffix(".lock")):
        yield


def trained_policy(job: Job) -> CandidatePolicy:
    """The job's learned policy: trained now, or loaded from the cache if a job trained it."""
    from misical_gym.train.run import run_training
    from misical_gym.train.select import load_policy, pool_env

    training = job.training()
    cache = Path(job.cache) / _digest(training)
    with _training_lock(cache):
        runs = list(cache.glob(f"*/*/{job.agent}_{job.seed}/summary.json"))
        env = job.env_settings
        if runs:
            features = env.get("features", "all")
            return load_policy(
                str(runs[0].parent), pool_env(job.store, job.target, 1, 1, features=features)
            )
        return run_training(
            job.agent,
            "MiSiCAL-Store",
            env_kwargs={**env, "root": job.store, "pool_size": job.pool_size},
            hyperparams=job.overrides,
            target=training["target"],
            pretrain_steps=job.pretrain_steps,
            online_steps=job.online_steps,
            seed=job.seed,
            logdir=cache,
            device="cpu",
            eval_episodes=1,
            overwrite=True,
            progress=False,
            threads=1,
        ).model


def job_picks(job: Job) -> tuple[dict[str, Any], FeatureStore, np.ndarray]:
    """Train the job's policy if needed and select its ``budget`` patches.

    Returns:
        :func:`~misical_gym.train.select.select_patches`'s selection, the job's store (opened
        to check the picks) and the picked patch ids.

    Raises:
        StoreError: a pick is unlabelled (an evaluation scores picks by their oracle counts).
    """
    import torch

    from misical_gym.errors import StoreError
    from misical_gym.store import FeatureStore
    from misical_gym.train.select import select_patches

    torch.set_num_threads(1)
    policy: str | CandidatePolicy = trained_policy(job) if job.learned else job.policy
    rank = job.select_mode == "rank"
    selection = select_patches(
        job.store,
        policy,
        job.target,
        job.budget,
        pool_size=job.pool_size,
        seed=job.seed,
        mode=job.select_mode,
        # The evaluation scores picks with their oracle counts: only labelled patches qualify.
        include_labelled=rank,
        features=job.env_settings.get("features", "all"),
    )
    store = FeatureStore.open(job.store)
    ids = np.array([p["patch_id"] for p in selection["picks"]], dtype=np.int64)
    if not store.labelled[ids].all():
        # An unknown count is stored as 0: scoring it would read "no target" for "not known".
        raise StoreError(
            f"{store.path}: {int((~store.labelled[ids]).sum())} of the picks are unlabelled; "
            "an evaluation scores picks by their oracle counts, so it needs a labelled pool"
        )
    return selection, store, ids


def run_job(job: Job) -> dict[str, Any]:
    """Train if needed, select ``budget`` patches, and score the picks with the oracle counts."""
    from misical_gym.envs.core import DEFAULT_REWARD_BINS, DEFAULT_REWARD_VALUES, RewardFunction

    selection, store, ids = job_picks(job)
    env = job.env_settings
    counts = np.asarray(store.counts[ids, selection["target_id"]], dtype=np.int64)
    # The picks' reward under the job's scheme: what a greedy episode of the point earns.
    reward_fn = RewardFunction(
        env.get("reward", "categorical"),
        env.get("reward_bins", DEFAULT_REWARD_BINS),
        env.get("reward_values", DEFAULT_REWARD_VALUES),
    )
    iou = None
    if job.retrain:
        from misical_gym.segmenter.retrain import retrain_iou

        assert job.retrain_epochs is not None and job.retrain_learning_rate is not None
        assert job.retrain_weighting is not None and job.retrain_weights_from is not None
        value = retrain_iou(
            store,
            selection["target_id"],
            ids,
            seed=job.seed,
            epochs=job.retrain_epochs,
            learning_rate=job.retrain_learning_rate,
            class_weighting=job.retrain_weighting,
            weights_from=job.retrain_weights_from,
        )
        iou = None if np.isnan(value) else value  # NaN: the class is nowhere in the test split
    return {
        "target": selection["target"],
        "target_id": selection["target_id"],
        "policy": job.policy,
        "seed": job.seed,
        "target_pixels": int(counts.sum()),
        "hit_rate": float((counts > 0).mean()) if counts.size else 0.0,
        "reward": float(reward_fn(counts, store.areas[ids]).sum()),
        "iou": iou,
        **job.retraining(),
        "curve": np.cumsum(counts).tolist(),
    }
