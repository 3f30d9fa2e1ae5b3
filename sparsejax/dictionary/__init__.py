"""Sparse dictionary codes: classical solvers, dictionary learning and sparse autoencoders."""
