"""Learned shower generators and their building blocks.

* :mod:`calogen.models.blocks` — ConcatSquash layers, the PointWise Net and the EPiC encoder
  (network pieces shared by CaloClouds and CaloClouds II; no diffusion-specific code).
* :mod:`calogen.models.ddpm` — the DDPM noise schedule, loss and ancestral sampler.
* :mod:`calogen.models.flows` — the Latent Flow (zuko rational-quadratic spline couplings).
* :mod:`calogen.models.shower_flow` — the Shower Flow (points / energies per layer given E).
* :mod:`calogen.models.training` — checkpoints (safetensors + JSON), resumable training loop.
* :mod:`calogen.models.registry` — model names → train / load functions.
* :mod:`calogen.models.caloclouds` — CaloClouds (2305.04847).

Import the sub-modules directly; this package does not import torch-heavy code eagerly.
"""
