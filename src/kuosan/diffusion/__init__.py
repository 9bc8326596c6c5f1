"""The mathematical core, in the σ view of EDM (Karras et al. 2022): schedules, preconditioners,
objectives, samplers and guidance. Everything here is a function of tensors or of a denoiser
``D(x, sigma, **cond) -> x0_hat``; nothing depends on a particular network."""
