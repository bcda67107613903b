"""Latent-space exaggeration (Zaritsky et al., Cell Systems 2021): encode cells, move codes along a direction, decode and measure."""
