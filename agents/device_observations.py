"""Compact replay's observation rebuild on the agent's device: the feature table as a tensor.

Compact replay stores each state as candidate store ids, target and budget left, and rebuilds
a sampled batch's observations from the store's feature table. :class:`DeviceObservations`
holds that table as a torch tensor on the agent's device (a GPU, say) and rebuilds the batch
there, so only the ids cross to the device, not the float observations.

It is the torch twin of :meth:`misical_gym.envs.core.ObservationBuilder.build` (the env side
stays NumPy-only, so it cannot share the code); the tests check that both give identical
observations for every column option.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class DeviceObservations:
    """Rebuilds observations from compact states ``[..., K + 2]`` on one device.

    Args:
        env: The MiSiCAL env (single or native vector) whose ``builder``, ``pool_size``,
            ``budget`` and ``flatten`` the observations follow.
        device: Where the feature table lives and the observations are built.
    """

    def __init__(self, env: Any, device: torch.device) -> None:
        builder = env.builder
        self.pool_size = int(env.pool_size)
        self.budget = float(env.budget)
        self.flatten = bool(env.flatten)
        # A copy, not a view of the store's read-only memory map.
        self.table = torch.tensor(np.asarray(builder.features), device=device)
        self.num_global = int(builder.num_global)
        self.num_base = int(builder.num_base)
        self.num_full = int(builder.num_full)
        self.num_classes = self.num_full - self.num_base - 3 if builder.target_onehot else 0
        self.columns = (
            None
            if builder.columns is None
            else torch.as_tensor(builder.columns, dtype=torch.int64, device=device)
        )
        self.device = device

    def __call__(self, compact: np.ndarray) -> torch.Tensor:
        """Float32 observations for compact states, as the env's ``observation_from_compact``.

        Raises:
            ValueError: The states do not end in ``pool_size + 2`` values, or hold an id or a
                class outside the store (checked here: an index out of range on a GPU is a
                device-side assert, not an exception).
        """
        k = self.pool_size
        if compact.shape[-1] != k + 2:
            raise ValueError(f"compact states end in {k + 2} values, got shape {compact.shape}")
        store_ids, targets = compact[..., :k], compact[..., k]
        if compact.size and (
            store_ids.min() < -1
            or store_ids.max() >= len(self.table)
            or targets.min() < 0
            or targets.max() >= self.num_base - self.num_global
        ):
            raise ValueError("compact states hold a store id or a class outside the store")
        states = torch.as_tensor(compact, dtype=torch.int64).to(self.device)
        ids, target = states[..., :k], states[..., k : k + 1]  # [..., K], [..., 1]
        nb, g = self.num_base, self.num_global
        # An empty slot (-1) reads the last row, as NumPy's take does; it is zeroed below.
        rows = self.table[ids]  # [..., K, 3 + 2C]
        out = torch.empty((*ids.shape, self.num_full), dtype=torch.float32, device=self.device)
        out[..., :nb] = rows[..., :nb]
        per_slot = target.expand(ids.shape).unsqueeze(-1)  # [..., K, 1]
        out[..., nb : nb + 1] = rows.gather(-1, per_slot + g)
        out[..., nb + 1 : nb + 2] = rows.gather(-1, per_slot + nb)
        # The same float32 division as NumPy's int64 / float, then the float32 cast.
        budget_left = states[..., k + 1 : k + 2].to(torch.float64) / self.budget
        out[..., nb + 2] = budget_left.to(torch.float32)
        if self.num_classes:
            out[..., nb + 3 :] = torch.nn.functional.one_hot(
                per_slot.squeeze(-1), self.num_classes
            ).to(torch.float32)
        out[ids < 0] = 0.0
        if self.columns is not None:
            out = out[..., self.columns]
        return out.reshape(*out.shape[:-2], -1) if self.flatten else out
