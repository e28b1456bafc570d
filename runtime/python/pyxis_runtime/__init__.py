"""Python side of Pyxis: the zygote (preloads and forks kernels) and the kernel driver."""

__all__ = ["framing", "kernel", "zygote"]
