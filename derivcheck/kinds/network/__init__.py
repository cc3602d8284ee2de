"""Network cases (``network = [...]``): MLPs, CNNs, RNNs, attention, diffusion steps, PINN quantities of a network."""
