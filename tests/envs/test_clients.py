"""Third-party clients on episodes that run out of patches: MaskablePPO and TorchRL."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

torch.set_num_threads(1)


def out_of_patches_env(store, **kwargs) -> gym.Env:
    """Budget above the init split's patches: every episode runs out before its budget."""
    budget = store.split_ids("init").size + 10
    return gym.make("MiSiCAL-Store", root=str(store.path), budget=budget, pool_size=8, **kwargs)


def test_maskable_ppo_never_picks_a_masked_slot_when_patches_run_out(tiny_store) -> None:
    from sb3_contrib import MaskablePPO

    class Ends(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.masked = self.truncated = 0

        def _on_step(self) -> bool:
            infos = self.locals["infos"]
            self.masked += sum(bool(i["masked_action"]) for i in infos)
            self.truncated += sum(bool(i["out_of_patches"]) for i in infos)
            return True

    env = out_of_patches_env(tiny_store)
    ends = Ends()
    model = MaskablePPO("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=1, seed=0)
    model.learn(2 * tiny_store.split_ids("init").size + 20, callback=ends)
    assert ends.truncated >= 2 and ends.masked == 0


def test_torchrl_rolls_on_through_episodes_that_run_out(tiny_store) -> None:
    from torchrl.data import Categorical
    from torchrl.envs import ActionMask, DTypeCastTransform, GymEnv, TransformedEnv
    from torchrl.envs.libs.gym import default_info_dict_reader
    from torchrl.envs.utils import check_env_specs

    torch.manual_seed(0)
    patches = tiny_store.split_ids("init").size
    budget = patches + 10
    env = GymEnv("MiSiCAL-Store", root=str(tiny_store.path), budget=budget, pool_size=8)
    spec = {"action_mask": Categorical(2, shape=(8,), dtype=torch.int8)}
    env.set_info_dict_reader(default_info_dict_reader(["action_mask"], spec=spec))
    env = TransformedEnv(env, DTypeCastTransform(torch.int8, torch.bool, in_keys=["action_mask"]))
    env.append_transform(ActionMask())
    check_env_specs(env)
    # Before, the steps after the last patch had every slot masked: "invalid multinomial".
    rollout = env.rollout(2 * patches + 5, break_when_any_done=False)
    truncated = rollout["next", "truncated"].squeeze(-1).numpy()
    np.testing.assert_array_equal(np.flatnonzero(truncated), [patches - 1, 2 * patches - 1])
    assert not rollout["next", "terminated"].any()
