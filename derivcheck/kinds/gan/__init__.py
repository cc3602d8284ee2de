"""GAN cases (``generator``, ``discriminator``): one training step of both players."""
