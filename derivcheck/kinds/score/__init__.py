"""Score cases (``density``): log-densities of diffused Gaussian mixtures, scores and DDPM steps."""
