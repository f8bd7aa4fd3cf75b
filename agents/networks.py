"""The Q-network of the Double DQN agent: a DeepSets scorer over the candidate patches."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from misical_gym.agents.policy import valid_rows


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
        phi_arch: Sequence[int] = (32,),
        rho_arch: Sequence[int] = (32,),
        dueling: bool = False,
    ) -> None:
        """Build the network.

        Args:
            num_features: F, the number of features of one candidate.
            phi_arch: Hidden widths of the per-candidate embedding; at least one layer.
            rho_arch: Hidden widths of the scorer (and of the value head when dueling).
            dueling: Add a state-value head on the context.

        Raises:
            ValueError: If ``num_features`` or a width is not positive or ``phi_arch`` is empty.
        """
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be positive, got {num_features}")
        if not phi_arch or any(w < 1 for w in (*phi_arch, *rho_arch)):
            raise ValueError(
                f"phi_arch needs at least one layer and all widths must be positive, got "
                f"phi_arch={list(phi_arch)}, rho_arch={list(rho_arch)}"
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

    def mean_weights(self, obs: torch.Tensor) -> torch.Tensor:
        """``[B, K]`` each slot's weight in its set's mean: 1 / the number of valid slots on
        the valid ones, 0 on empty ones. It depends on ``obs`` only, so a caller that scores the
        same observations with two networks computes it once."""
        valid = valid_rows(obs.reshape(obs.shape[0], -1, self.num_features))
        weights = valid.to(obs.dtype)
        return weights / weights.sum(dim=1, keepdim=True).clamp_min(1.0)

    def forward(self, obs: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Q-values of every candidate slot.

        Args:
            obs: ``[B, K * F]`` flat or ``[B, K, F]`` candidate observations.
            weights: ``mean_weights(obs)``, when the caller has it already.

        Returns:
            ``[B, K]`` Q-values (also for empty slots; mask them when choosing actions).
        """
        batch = obs.shape[0]
        if weights is None:
            weights = self.mean_weights(obs)
        # Every candidate of every set as one row: 2-D products, cheaper than 3-D ones backwards.
        x = obs.reshape(-1, self.num_features)  # [B * K, F]
        embedding = self.phi(x)  # [B * K, H]
        # The mean over the valid slots as one batched product: fewer ops than mask, sum, divide.
        sets = embedding.view(batch, -1, embedding.shape[-1])  # [B, K, H]
        context = torch.bmm(weights.unsqueeze(1), sets).squeeze(1)  # [B, H]
        width = self.rho_embedding.out_features
        hidden = self.rho_embedding(embedding).view(batch, -1, width)
        hidden = hidden + self.rho_context(context).unsqueeze(1)  # [B, K, H']
        scores = self.rho(hidden.view(-1, width)).view(batch, -1)  # [B, K]
        if self.value is None:
            return scores
        centre = (scores * weights).sum(dim=1, keepdim=True)
        return self.value(context) + scores - centre
