"""NStepPrioritizedReplayBuffer against slow, obviously correct references written here.

Most tests identify a stored transition by its observation: step ``t`` of episode ``e`` has
observation ``[t, e]``, and an episode's final ``next_obs`` is ``[-(t + 1), e]``. Until
:meth:`update_priorities` is called every transition has the same priority, and stratified
sampling of ``len(buffer)`` transitions then returns each one exactly once: that is how the tests
read the whole buffer through the public API.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from misical_gym.agents import NStepPrioritizedReplayBuffer, ReplaySample

NUM_ACTIONS = 3


@dataclass(frozen=True)
class Step:
    obs: np.ndarray
    action: int
    reward: float
    next_obs: np.ndarray
    terminated: bool
    truncated: bool
    next_mask: np.ndarray


@dataclass(frozen=True)
class Expected:
    obs: np.ndarray
    action: int
    ret: float
    next_obs: np.ndarray
    discount: float
    next_mask: np.ndarray


def make_steps(episodes: list[tuple[list[float], str]], seed: int = 0) -> list[Step]:
    """One Step per reward; ``end`` is "terminated", "truncated", "both" or "open" (unfinished)."""
    rng = np.random.default_rng(seed)
    steps = []
    t = 0
    for e, (rewards, end) in enumerate(episodes):
        for i, reward in enumerate(rewards):
            last = i == len(rewards) - 1
            ended = last and end != "open"
            steps.append(
                Step(
                    obs=np.array([t, e], dtype=np.float32),
                    action=int(rng.integers(NUM_ACTIONS)),
                    reward=reward,
                    next_obs=np.array([-(t + 1) if ended else t + 1, e], dtype=np.float32),
                    terminated=ended and end in ("terminated", "both"),
                    truncated=ended and end in ("truncated", "both"),
                    next_mask=rng.random(NUM_ACTIONS) < 0.5,
                )
            )
            t += 1
    return steps


def reference(steps: list[Step], capacity: int, n_step: int, gamma: float) -> dict[int, Expected]:
    """Every step the buffer must be able to sample, keyed by step number.

    Observations are written in order: an episode's first ``obs``, then each step's ``next_obs``.
    The buffer keeps the last ``capacity`` of them. A step is sampleable when its observation is
    kept and its window is closed: ``n_step`` steps (it included) in its episode, or fewer
    ending at the episode's end. A window is never extended past the last step added.
    """
    position_of_obs = []
    written = 0
    starts_episode = True
    for step in steps:
        if starts_episode:
            written += 1
        position_of_obs.append(written - 1)
        written += 1
        starts_episode = step.terminated or step.truncated

    expected = {}
    for t, step in enumerate(steps):
        if position_of_obs[t] < written - capacity:
            continue
        window = []
        for later in steps[t : t + n_step]:
            window.append(later)
            if later.terminated or later.truncated:
                break
        last = window[-1]
        if len(window) < n_step and not (last.terminated or last.truncated):
            continue  # still open
        expected[t] = Expected(
            obs=step.obs,
            action=step.action,
            ret=sum(gamma**i * s.reward for i, s in enumerate(window)),
            next_obs=last.next_obs,
            discount=0.0 if last.terminated else gamma ** len(window),
            next_mask=last.next_mask,
        )
    return expected


def add(buffer: NStepPrioritizedReplayBuffer, step: Step) -> None:
    buffer.add(
        step.obs,
        step.action,
        step.reward,
        step.next_obs,
        step.terminated,
        step.truncated,
        step.next_mask,
    )


def read_all(buffer: NStepPrioritizedReplayBuffer) -> ReplaySample:
    """Every sampleable transition once (all priorities must be equal)."""
    batch = buffer.sample(len(buffer), beta=0.0, rng=np.random.default_rng(0))
    assert len(set(batch.indices.tolist())) == len(buffer)
    return batch


def assert_matches_reference(
    buffer: NStepPrioritizedReplayBuffer, expected: dict[int, Expected]
) -> None:
    assert len(buffer) == len(expected)
    if not expected:
        with pytest.raises(ValueError, match="no sampleable"):
            buffer.sample(1, beta=0.0)
        return
    batch = read_all(buffer)
    assert sorted(int(t) for t in batch.obs[:, 0]) == sorted(expected)
    for i, t in enumerate(batch.obs[:, 0].astype(int)):
        want = expected[t]
        np.testing.assert_array_equal(batch.obs[i], want.obs)
        assert batch.actions[i] == want.action
        assert batch.returns[i] == pytest.approx(want.ret, rel=1e-6, abs=1e-6)
        np.testing.assert_array_equal(batch.next_obs[i], want.next_obs)
        assert batch.discounts[i] == pytest.approx(want.discount, rel=1e-6, abs=0.0)
        np.testing.assert_array_equal(batch.next_action_masks[i], want.next_mask)


@st.composite
def episode_streams(draw: st.DrawFn) -> list[tuple[list[float], str]]:
    episodes = []
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        rewards = draw(st.lists(st.integers(-3, 3).map(float), min_size=1, max_size=7))
        episodes.append((rewards, draw(st.sampled_from(["terminated", "truncated", "both"]))))
    if draw(st.booleans()):
        episodes[-1] = (episodes[-1][0], "open")
    return episodes


@settings(max_examples=100, deadline=None)
@given(
    episode_streams(),
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=1, max_value=14),
    st.sampled_from([0.0, 0.5, 0.9, 1.0]),
)
def test_n_step_windows_match_reference_after_every_step(
    episodes: list[tuple[list[float], str]], n_step: int, extra_capacity: int, gamma: float
) -> None:
    capacity = n_step + extra_capacity
    steps = make_steps(episodes)
    buffer = NStepPrioritizedReplayBuffer(capacity, (2,), NUM_ACTIONS, n_step=n_step, gamma=gamma)
    for t, step in enumerate(steps):
        add(buffer, step)
        assert_matches_reference(buffer, reference(steps[: t + 1], capacity, n_step, gamma))


@pytest.mark.slow
def test_long_random_stream_matches_reference() -> None:
    rng = np.random.default_rng(1)
    episodes = [
        (
            rng.normal(size=int(rng.integers(1, 40))).tolist(),
            str(rng.choice(["terminated", "truncated"])),
        )
        for _ in range(300)
    ]
    steps = make_steps(episodes, seed=1)
    buffer = NStepPrioritizedReplayBuffer(997, (2,), NUM_ACTIONS, n_step=5, gamma=0.97)
    for t, step in enumerate(steps):
        add(buffer, step)
        if t % 97 == 0:
            assert_matches_reference(buffer, reference(steps[: t + 1], 997, 5, 0.97))
    assert_matches_reference(buffer, reference(steps, 997, 5, 0.97))


def test_truncated_window_bootstraps_with_gamma_to_its_true_length() -> None:
    buffer = NStepPrioritizedReplayBuffer(10, (2,), NUM_ACTIONS, n_step=3, gamma=0.5)
    for step in make_steps([([1.0, 2.0], "truncated")]):
        add(buffer, step)
    batch = read_all(buffer)
    by_step = {int(t): i for i, t in enumerate(batch.obs[:, 0])}
    np.testing.assert_allclose(batch.returns[[by_step[0], by_step[1]]], [1.0 + 0.5 * 2.0, 2.0])
    np.testing.assert_allclose(batch.discounts[[by_step[0], by_step[1]]], [0.25, 0.5])
    np.testing.assert_array_equal(batch.next_obs[:, 0], [-2.0, -2.0])  # the final next_obs


@pytest.mark.parametrize("end", ["terminated", "both"])
def test_terminated_window_does_not_bootstrap(end: str) -> None:
    buffer = NStepPrioritizedReplayBuffer(10, (2,), NUM_ACTIONS, n_step=3, gamma=0.5)
    for step in make_steps([([1.0, 2.0, 4.0, 8.0], end)]):
        add(buffer, step)
    batch = read_all(buffer)
    order = np.argsort(batch.obs[:, 0])
    np.testing.assert_allclose(batch.returns[order], [1.0 + 1.0 + 1.0, 2.0 + 2.0 + 2.0, 8.0, 8.0])
    np.testing.assert_allclose(batch.discounts[order], [0.125, 0.0, 0.0, 0.0])


def test_open_windows_are_not_sampleable_until_closed() -> None:
    buffer = NStepPrioritizedReplayBuffer(10, (2,), NUM_ACTIONS, n_step=3)
    steps = make_steps([([1.0, 1.0, 1.0, 1.0], "truncated")])
    add(buffer, steps[0])
    add(buffer, steps[1])
    assert len(buffer) == 0
    with pytest.raises(ValueError, match="no sampleable"):
        buffer.sample(4, beta=0.4)
    add(buffer, steps[2])
    assert len(buffer) == 1
    add(buffer, steps[3])
    assert len(buffer) == 4


def test_circular_overwrite_keeps_only_the_newest_slots() -> None:
    # One long episode, capacity 6: the slots hold the observations of steps 15..19 plus the
    # next_obs of step 19; step 19's window (n=2) is still open.
    buffer = NStepPrioritizedReplayBuffer(6, (2,), NUM_ACTIONS, n_step=2)
    for step in make_steps([([1.0] * 20, "open")]):
        add(buffer, step)
    assert sorted(read_all(buffer).obs[:, 0].astype(int).tolist()) == [15, 16, 17, 18]


def test_compact_integer_observations_of_any_shape() -> None:
    buffer = NStepPrioritizedReplayBuffer(8, (2, 3), 4, n_step=2, obs_dtype=np.int32)
    obs = [np.full((2, 3), 10 * t, dtype=np.int32) for t in range(4)]
    for t in range(3):
        buffer.add(obs[t], t, 1.0, obs[t + 1], False, t == 2)
    batch = read_all(buffer)
    assert batch.obs.dtype == np.int32 and batch.obs.shape == (3, 2, 3)
    order = np.argsort(batch.obs[:, 0, 0])
    np.testing.assert_array_equal(batch.next_obs[order][:, 0, 0], [20, 30, 30])
    assert batch.next_action_masks.all()  # no mask given: every action is valid
    assert batch.actions.dtype == np.int64 and batch.indices.dtype == np.int64
    for name in ("returns", "discounts", "weights"):
        assert getattr(batch, name).dtype == np.float32


def filled_buffer(num_steps: int, alpha: float = 0.6, eps: float = 1e-6, **kwargs: object):
    """A buffer holding ``num_steps`` closed transitions of one truncated episode."""
    buffer = NStepPrioritizedReplayBuffer(
        num_steps + 8, (2,), NUM_ACTIONS, n_step=2, alpha=alpha, eps=eps, **kwargs
    )
    for step in make_steps([([0.0] * num_steps, "truncated")]):
        add(buffer, step)
    assert len(buffer) == num_steps
    return buffer, read_all(buffer).indices


def test_priority_is_abs_td_plus_eps_to_the_alpha() -> None:
    buffer, indices = filled_buffer(5, alpha=0.7, eps=0.01)
    td = np.array([-2.0, 0.0, 0.5, 3.0, -1e-3])
    buffer.update_priorities(indices, td)
    # White-box: the tree holds exactly the priorities.
    np.testing.assert_allclose(buffer._tree[indices], (np.abs(td) + 0.01) ** 0.7, rtol=1e-12)


def test_repeated_indices_last_td_error_wins() -> None:
    buffer, indices = filled_buffer(3, alpha=1.0, eps=0.0)
    buffer.update_priorities(indices[[0, 1, 0]], np.array([5.0, 1.0, 2.0]))
    np.testing.assert_allclose(buffer._tree[indices[:2]], [2.0, 1.0])


def test_new_transitions_enter_at_running_max_priority() -> None:
    buffer = NStepPrioritizedReplayBuffer(20, (2,), NUM_ACTIONS, n_step=1, alpha=1.0, eps=0.0)
    steps = make_steps([([0.0] * 6, "truncated")])
    add(buffer, steps[0])
    first = read_all(buffer).indices
    assert buffer._tree[first][0] == 1.0  # the initial max
    buffer.update_priorities(first, np.array([7.5]))
    add(buffer, steps[1])
    buffer.update_priorities(first, np.array([0.5]))  # the running max stays 7.5
    add(buffer, steps[2])
    batch = buffer.sample(64, beta=0.0, rng=np.random.default_rng(0))
    priorities = {
        int(t): p for t, p in zip(batch.obs[:, 0], buffer._tree[batch.indices], strict=True)
    }
    assert priorities == {0: 0.5, 1: 7.5, 2: 7.5}


def test_sampling_frequencies_are_proportional_to_priority() -> None:
    buffer, indices = filled_buffer(40)
    rng = np.random.default_rng(123)
    td = rng.exponential(size=40) * 5
    buffer.update_priorities(indices, td)
    priorities = (np.abs(td) + 1e-6) ** 0.6
    counts = dict.fromkeys(indices.tolist(), 0)
    for _ in range(1000):
        for index in buffer.sample(64, beta=0.4, rng=rng).indices.tolist():
            counts[index] += 1
    observed = np.array([counts[i] for i in indices.tolist()])
    draws = observed.sum()
    proportional = stats.chisquare(observed, priorities / priorities.sum() * draws)
    uniform = stats.chisquare(observed, np.full(40, draws / 40))
    assert proportional.pvalue > 1e-3
    assert uniform.pvalue < 1e-12  # the test can tell proportional from uniform


def test_sampling_is_stratified() -> None:
    buffer, indices = filled_buffer(50)
    rng = np.random.default_rng(7)
    buffer.update_priorities(indices, rng.exponential(size=50))
    slots = np.arange(buffer.capacity)
    leaves = buffer._tree[slots]
    upper = np.cumsum(leaves)
    lower = upper - leaves
    total, batch_size = upper[-1], 16
    tolerance = 1e-9 * total
    for _ in range(200):
        batch = buffer.sample(batch_size, beta=0.4, rng=rng)
        # Draw i must come from the mass of stratum i: its leaf's interval meets the stratum.
        for i, slot in enumerate(batch.indices):
            assert lower[slot] - tolerance <= (i + 1) * total / batch_size
            assert upper[slot] + tolerance >= i * total / batch_size


def test_importance_weights_normalised_by_batch_max() -> None:
    buffer, indices = filled_buffer(30)
    rng = np.random.default_rng(3)
    td = rng.normal(size=30) * 3
    buffer.update_priorities(indices, td)
    priority = dict(zip(indices.tolist(), (np.abs(td) + 1e-6) ** 0.6, strict=True))
    total = sum(priority.values())
    for beta in (0.0, 0.4, 1.0):
        batch = buffer.sample(32, beta=beta, rng=rng)
        probabilities = np.array([priority[i] / total for i in batch.indices.tolist()])
        weights = (len(buffer) * probabilities) ** -beta
        np.testing.assert_allclose(batch.weights, weights / weights.max(), rtol=1e-5)
        assert batch.weights.max() == 1.0


def test_stale_indices_do_not_revive_overwritten_slots() -> None:
    buffer = NStepPrioritizedReplayBuffer(6, (2,), NUM_ACTIONS, n_step=1)
    steps = make_steps([([0.0] * 12, "open")])
    for step in steps[:4]:
        add(buffer, step)
    stale = read_all(buffer).indices
    for step in steps[4:]:
        add(buffer, step)
    live_before = sorted(read_all(buffer).obs[:, 0].tolist())
    buffer.update_priorities(stale, np.full(stale.size, 1e6))
    assert len(buffer) == len(live_before)
    batch = buffer.sample(200, beta=0.0, rng=np.random.default_rng(0))
    assert set(batch.obs[:, 0].tolist()) <= set(live_before)


def test_state_dict_round_trip_resumes_mid_episode_identically() -> None:
    steps = make_steps([([1.0, -1.0, 2.0], "terminated"), ([0.5] * 9, "truncated")], seed=5)
    original = NStepPrioritizedReplayBuffer(9, (2,), NUM_ACTIONS, n_step=3, gamma=0.9)
    for step in steps[:6]:  # stop with open windows pending
        add(original, step)
    batch = original.sample(4, beta=0.5)  # the buffer's own RNG, saved with the state
    original.update_priorities(batch.indices, np.array([0.1, 2.0, 3.0, 0.4]))
    state = original.state_dict()
    snapshot = copy.deepcopy(state)
    restored = NStepPrioritizedReplayBuffer(9, (2,), NUM_ACTIONS, n_step=3, gamma=0.9)
    restored.load_state_dict(state)
    for step in steps[6:]:
        add(original, step)
        add(restored, step)
        a, b = original.sample(8, beta=0.7), restored.sample(8, beta=0.7)
        for field_a, field_b in zip(a, b, strict=True):
            np.testing.assert_array_equal(field_a, field_b)
        assert len(original) == len(restored)
    # The state is a snapshot, not a view of the live buffer.
    np.testing.assert_array_equal(state["slots"], snapshot["slots"])
    np.testing.assert_array_equal(state["tree"]["priorities"], snapshot["tree"]["priorities"])


def test_load_state_dict_rejects_a_different_configuration() -> None:
    state = NStepPrioritizedReplayBuffer(9, (2,), NUM_ACTIONS).state_dict()
    with pytest.raises(ValueError, match="config"):
        NStepPrioritizedReplayBuffer(9, (2,), NUM_ACTIONS, n_step=2).load_state_dict(state)
    with pytest.raises(ValueError, match="config"):
        NStepPrioritizedReplayBuffer(9, (2,), NUM_ACTIONS, obs_dtype=np.int32).load_state_dict(
            state
        )


def test_memory_bytes_per_transition_counts_obs_once() -> None:
    compact = NStepPrioritizedReplayBuffer(1000, (34,), 32, obs_dtype=np.int32)
    raw = NStepPrioritizedReplayBuffer(1000, (32, 177), 32)
    tree_share = 2 * 1024 * 8 / 1000  # float64 nodes over the next power of two of leaves
    scalars = 8 + 4 + 4 + 32 + 1  # action, return, discount, mask, bootstrap offset

    def record(obs_bytes: int) -> int:
        return -(-(obs_bytes + scalars) // 8) * 8  # padded to the 8-byte alignment

    assert compact.memory_bytes_per_transition == pytest.approx(record(34 * 4) + tree_share)
    assert raw.memory_bytes_per_transition == pytest.approx(record(32 * 177 * 4) + tree_share)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"capacity": 3, "n_step": 3}, "capacity"),
        ({"n_step": 0}, "n_step"),
        ({"num_actions": 0}, "num_actions"),
        ({"gamma": 1.5}, "gamma"),
        ({"alpha": -0.1}, "alpha"),
        ({"eps": -1.0}, "eps"),
    ],
)
def test_bad_constructor_arguments_raise(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"capacity": 10, "obs_shape": (2,), "num_actions": 3}
    with pytest.raises(ValueError, match=message):
        NStepPrioritizedReplayBuffer(**{**arguments, **kwargs})


def test_bad_add_arguments_raise_and_store_nothing() -> None:
    buffer = NStepPrioritizedReplayBuffer(10, (2,), NUM_ACTIONS, n_step=1)
    zeros, ones = np.zeros(2), np.ones(2)
    with pytest.raises(ValueError, match="obs must have shape"):
        buffer.add(np.zeros(3), 0, 0.0, ones, False, False)
    with pytest.raises(ValueError, match="action"):
        buffer.add(zeros, NUM_ACTIONS, 0.0, ones, False, False)
    with pytest.raises(ValueError, match="reward"):
        buffer.add(zeros, 0, np.nan, ones, False, False)
    with pytest.raises(ValueError, match="next_action_mask"):
        buffer.add(zeros, 0, 0.0, ones, False, False, np.ones(NUM_ACTIONS + 1, dtype=bool))
    compact = NStepPrioritizedReplayBuffer(10, (2,), NUM_ACTIONS, obs_dtype=np.int32)
    with pytest.raises(ValueError, match="cannot be stored as int32"):
        compact.add(zeros, 0, 0.0, np.full(2, 0.5), False, False)
    assert len(buffer) == 0
    buffer.add(zeros, 0, 0.0, ones, False, False)
    with pytest.raises(ValueError, match="previous step's next_obs"):
        buffer.add(zeros, 0, 0.0, ones, False, False)
    assert len(buffer) == 1


def test_bad_sample_and_update_arguments_raise() -> None:
    buffer, indices = filled_buffer(4)
    with pytest.raises(ValueError, match="batch_size"):
        buffer.sample(0, beta=0.4)
    with pytest.raises(ValueError, match="beta"):
        buffer.sample(4, beta=-1.0)
    with pytest.raises(ValueError, match="must match"):
        buffer.update_priorities(indices, np.zeros(3))
    with pytest.raises(ValueError, match="indices"):
        buffer.update_priorities(np.array([buffer.capacity]), np.zeros(1))
    with pytest.raises(ValueError, match="finite"):
        buffer.update_priorities(indices[:1], np.array([np.nan]))
