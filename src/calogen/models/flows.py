"""Latent Flow of CaloClouds: a conditional normalizing flow for the encoder's latent z.

Ten rational-quadratic spline coupling blocks (zuko :class:`zuko.flows.NSF` with
``passes=2``; the coupling halves alternate between blocks), each with an MLP of two hidden
layers of 128 and LeakyReLU, conditioned on the normalised (E, N). Sampling draws the base
noise from an explicit ``torch.Generator`` so that a seed fixes the result.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import zuko
from torch import Tensor, nn


class LatentFlow(nn.Module):
    """``p(z | c)`` for ``z`` of ``latent_dim`` features and ``c`` of ``cond_dim``.

    Args:
        latent_dim: size of z.
        cond_dim: size of the condition.
        transforms: number of coupling blocks (paper: 10).
        hidden: hidden widths of each block's MLP (paper: (128, 128)).
        bins: spline bins.
    """

    def __init__(
        self,
        latent_dim: int = 256,
        cond_dim: int = 2,
        transforms: int = 10,
        hidden: Sequence[int] = (128, 128),
        bins: int = 8,
    ) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.cond_dim = int(cond_dim)
        self.flow = zuko.flows.NSF(
            self.latent_dim,
            self.cond_dim,
            bins=int(bins),
            transforms=int(transforms),
            passes=2,
            hidden_features=tuple(int(h) for h in hidden),
            activation=nn.LeakyReLU,
        )

    def nll(self, z: Tensor, c: Tensor) -> Tensor:
        """Mean negative log-likelihood per latent dimension."""
        return -self.flow(c).log_prob(z).mean() / self.latent_dim

    @torch.no_grad()
    def sample(self, c: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One latent per row of ``c`` ``[S, cond_dim]`` → ``[S, latent_dim]``."""
        base = torch.randn((c.shape[0], self.latent_dim), generator=generator, dtype=c.dtype)
        return self.flow(c).transform.inv(base)


__all__ = ["LatentFlow"]
