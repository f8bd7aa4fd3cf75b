"""The Q-network of the Double DQN agent: a DeepSets scorer over the candidate patches."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from misical_gym.agents.policy import valid_rows

MAX_WIDTH, MAX_LAYERS = 4096, 8
"""The widest layer and the most layers of ``phi_arch`` or ``rho_arch``: a checkpoint names its
network, and a forged one must not make loading build a network of any size."""


def _mlp(in_features: int, widths: Sequence[int]) -> nn.Sequential:
    """Linear + ReLU layers of the given widths."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    return nn.Sequential(*layers)


class DeepSetQNetwork(nn.Module):
    """Scores every candidate with shared weights and a mean-pooled context of all candidates.

    Each candidate row ``x_i`` is embedded by ``phi``; the embeddings of the valid candidates are
    averaged into a context ``c``; ``rho`` maps ``[phi(x_i), c]`` to the candidate's Q-value. The
    weights do not depend on the number of candidates K, so one network serves any K, and
    permuting the candidates permutes the Q-values the same way.

    A candidate slot is valid unless its row is all zeros: the environment's empty slots are
    zero rows, so they are left out of the context (and out of the dueling centring).

    With ``dueling``, ``Q_i = V(c) + A_i - mean_valid(A)``: the value comes from the context and
    the advantages are centred over the valid slots.
    """

    def __init__(
        self,
        num_features: int,
        phi_arch: Sequence[int] = (16,),
        rho_arch: Sequence[int] = (16,),
        dueling: bool = False,
    ) -> None:
        """Build the network.

        Args:
            num_features: F, the number of features of one candidate.
            phi_arch: Hidden widths of the per-candidate embedding; 1 to :data:`MAX_LAYERS`
                layers.
            rho_arch: Hidden widths of the scorer (and of the value head when dueling); at most
                :data:`MAX_LAYERS` layers.
            dueling: Add a state-value head on the context.

        Raises:
            ValueError: If ``num_features`` is not positive, a width is not in 1 to
                :data:`MAX_WIDTH`, or an architecture has too few or too many layers.
        """
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be positive, got {num_features}")
        if (
            not 1 <= len(phi_arch) <= MAX_LAYERS
            or len(rho_arch) > MAX_LAYERS
            or any(not 1 <= w <= MAX_WIDTH for w in (*phi_arch, *rho_arch))
        ):
            raise ValueError(
                f"phi_arch needs 1 to {MAX_LAYERS} layers, rho_arch at most {MAX_LAYERS}, and "
                f"every width must be 1 to {MAX_WIDTH}; got phi_arch={list(phi_arch)}, "
                f"rho_arch={list(rho_arch)}"
            )
        self.num_features = int(num_features)
        self.arch: dict[str, list[int] | bool] = {
            "phi_arch": [int(w) for w in phi_arch],
            "rho_arch": [int(w) for w in rho_arch],
            "dueling": bool(dueling),
        }
        """The constructor's keywords that rebuild this network (a checkpoint saves them)."""
        embed = phi_arch[-1]
        self.phi = _mlp(num_features, phi_arch)
        # rho's first layer acts on [phi(x_i), c]; it is kept as its two halves so that the
        # context's half is computed once per set instead of once per candidate.
        widths = [*rho_arch, 1]
        self.rho_embedding = nn.Linear(embed, widths[0])
        self.rho_context = nn.Linear(embed, widths[0], bias=False)
        self.rho = nn.Sequential()
        for width_in, width_out in itertools.pairwise(widths):
            self.rho.extend([nn.ReLU(), nn.Linear(width_in, width_out)])
        self.value = (
            nn.Sequential(_mlp(embed, rho_arch), nn.Linear(([embed, *rho_arch])[-1], 1))
            if dueling
            else None
        )
        # The Linear layers in order, called through F.linear: the same ops as calling the
        # modules, without nn.Module's per-call dispatch (about a tenth of a small forward).
        # Plain lists, so they are no submodules; deepcopy and .to() keep them pointing at
        # this network's own layers.
        self._phi_layers = [m for m in self.phi if isinstance(m, nn.Linear)]
        self._rho_layers = [m for m in self.rho if isinstance(m, nn.Linear)]

    def mean_weights(self, obs: torch.Tensor) -> torch.Tensor:
        """``[B, K]`` each slot's weight in its set's mean: 1 / the number of valid slots on
        the valid ones, 0 on empty ones. It depends on ``obs`` only, so a caller that scores the
        same observations with two networks computes it once (:func:`mean_weights_numpy` is
        the same for NumPy rows)."""
        valid = valid_rows(obs.reshape(obs.shape[0], -1, self.num_features))
        weights = valid.to(obs.dtype)
        return weights / weights.sum(dim=1, keepdim=True).clamp_min(1.0)

    def forward(
        self,
        obs: torch.Tensor,
        weights: torch.Tensor | None = None,
        slots: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Q-values of every candidate slot, or of one chosen slot per set.

        Args:
            obs: ``[B, K * F]`` flat or ``[B, K, F]`` candidate observations.
            weights: ``mean_weights(obs)``, when the caller has it already.
            slots: ``[B]`` int64 slots: score only these (the scorer then runs on B rows
                instead of B * K; the context still pools every candidate). Not with dueling,
                whose centring needs every slot's score.

        Returns:
            ``[B, K]`` Q-values (also for empty slots; mask them when choosing actions), or
            ``[B]`` with ``slots``.
        """
        batch = obs.shape[0]
        if weights is None:
            weights = self.mean_weights(obs)
        # Every candidate of every set as one row: 2-D products, cheaper than 3-D ones backwards.
        x = obs.reshape(-1, self.num_features)  # [B * K, F]
        # In place on each layer's fresh output (no op saves it for backward): the same values
        # without allocating a second [B * K, H] tensor per op.
        for layer in self._phi_layers:
            x = torch.relu_(F.linear(x, layer.weight, layer.bias))
        embedding = x  # [B * K, H]
        # The mean over the valid slots as one batched product: fewer ops than mask, sum, divide.
        sets = embedding.view(batch, -1, embedding.shape[-1])  # [B, K, H]
        context = torch.bmm(weights.unsqueeze(1), sets).squeeze(1)  # [B, H]
        first, by_context = self.rho_embedding, self.rho_context
        if slots is not None:
            if self.value is not None:
                raise ValueError("slots= scores one slot per set, which dueling cannot centre")
            chosen = sets[torch.arange(batch, device=obs.device), slots]  # [B, H]
            hidden = F.linear(chosen, first.weight, first.bias)
            hidden = hidden + F.linear(context, by_context.weight)
            return self._score(self._activate(hidden)).view(batch)
        width = first.out_features
        hidden = F.linear(embedding, first.weight, first.bias).view(batch, -1, width)
        # Out of place, and the ReLU before the flattening view: an in-place op on a view puts
        # a CopySlices node into the backward pass, about a sixth of a small update's time.
        hidden = hidden + F.linear(context, by_context.weight).unsqueeze(1)  # [B, K, H']
        scores = self._score(self._activate(hidden).view(-1, width)).view(batch, -1)  # [B, K]
        if self.value is None:
            return scores
        centre = (scores * weights).sum(dim=1, keepdim=True)
        return self.value(context) + scores - centre

    def _activate(self, hidden: torch.Tensor) -> torch.Tensor:
        """The ReLU after ``rho``'s first layer, in place; none when that layer is the last."""
        return torch.relu_(hidden) if self._rho_layers else hidden

    def _score(self, hidden: torch.Tensor) -> torch.Tensor:
        """``rho`` after its first layer's ReLU: Linear, ReLU, ..., Linear on ``[rows, H']``."""
        for i, layer in enumerate(self._rho_layers):
            if i:  # each later layer's input is the previous one's fresh output, not a view
                hidden = torch.relu_(hidden)
            hidden = F.linear(hidden, layer.weight, layer.bias)
        return hidden


_SINGLE_THREAD_MACS = 2**18
"""OpenBLAS, NumPy's BLAS, runs a product of more multiply-adds than this on several threads,
which on a shared CPU cost more than torch's dispatch saves: the native vector env of 8
COCO-shaped envs learned at 123-129 env-steps/s with NumPy scoring its 8 observations, 469
with torch (two runs and one, under a load average near 3)."""


class NumpyQNetwork:
    """A :class:`DeepSetQNetwork`'s forward pass in NumPy, for acting on one env's few rows.

    On a CPU, torch's per-op dispatch is most of the cost of scoring one observation (K rows):
    about 40 us against NumPy's 15 on the synthetic store's. The arrays are views of the
    network's parameter tensors, so in-place updates (optimiser steps, ``load_state_dict``)
    show here without a copy. The values equal the network's up to float32 rounding (another
    BLAS sums in another order), so an argmax can differ on a near-tie.
    """

    def __init__(self, net: DeepSetQNetwork) -> None:
        """Mirror ``net``, whose parameters must be CPU float32 tensors."""

        def arrays(layers: Sequence[nn.Linear]) -> list[tuple[np.ndarray, np.ndarray]]:
            return [(m.weight.detach().numpy().T, m.bias.detach().numpy()) for m in layers]

        self._phi = arrays(net._phi_layers)
        self._rho = arrays(net._rho_layers)
        self._first = arrays([net.rho_embedding])[0]
        self._by_context = net.rho_context.weight.detach().numpy().T
        self._value = (
            None
            if net.value is None
            else arrays([m for m in net.value.modules() if isinstance(m, nn.Linear)])
        )
        per_row = max(w.size for w, _ in (*self._phi, self._first, *self._rho))
        self.max_rows = max(_SINGLE_THREAD_MACS // per_row, 1)
        """Candidate rows (sets times K) up to which each product stays single-threaded."""

    def __call__(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``[B, K]`` Q-values of float32 rows ``[B, K, F]`` with ``mean_weights_numpy(rows)``."""
        batch, k = weights.shape
        x = rows.reshape(batch * k, -1)  # 2-D products, as the network's forward
        for weight, bias in self._phi:
            x = np.dot(x, weight)
            x += bias
            np.maximum(x, 0.0, out=x)
        context = (weights[:, None, :] @ x.reshape(batch, k, -1))[:, 0]  # [B, H]
        weight, bias = self._first
        hidden = np.dot(x, weight)
        hidden += bias
        hidden = hidden.reshape(batch, k, -1)
        hidden += (context @ self._by_context)[:, None, :]
        hidden = hidden.reshape(batch * k, -1)
        for weight, bias in self._rho:
            np.maximum(hidden, 0.0, out=hidden)
            hidden = np.dot(hidden, weight)
            hidden += bias
        scores = hidden.reshape(batch, k)
        if self._value is None:
            return scores
        value = context
        for i, (weight, bias) in enumerate(self._value):
            value = value @ weight + bias
            if i < len(self._value) - 1:
                np.maximum(value, 0.0, out=value)
        return value + scores - (scores * weights).sum(axis=1, keepdims=True)


def mean_weights_numpy(rows: np.ndarray) -> np.ndarray:
    """:meth:`DeepSetQNetwork.mean_weights` of float32 rows ``[B, K, F]`` in NumPy: the same
    float32 values (1 / a count, rounded alike), for a caller whose rows are NumPy already, so
    that the few small ops run without torch's dispatch."""
    weights = valid_rows(rows).astype(np.float32)
    return weights / np.maximum(weights.sum(axis=1, keepdims=True), np.float32(1.0))
