"""Alignment and regularisation losses, each a pure function of tensors (or a small module
holding the network it needs), shared by methods and, where the same quantity is also a
validator, by `transferlab.evaluation`."""
