"""Benchmarks of tinygrad_bn against plain numpy and (when installed) PyTorch.

Run `python -m benchmarks.run [--quick]` from the repository root, or `tinygrad-bn bench`.
"""
