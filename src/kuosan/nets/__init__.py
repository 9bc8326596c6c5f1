"""Networks. Every network takes ``(x, c_noise, class_labels)`` and returns a tensor shaped like x
(with ``out_channels`` channels); a preconditioner turns it into a denoiser."""

from kuosan.nets.build import build_network, count_parameters, count_flops

__all__ = ["build_network", "count_parameters", "count_flops"]
