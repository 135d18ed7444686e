"""Training: the LightningModules (diffusion, autoencoders) and every Lightning callback."""
