"""sparsejax: sparsity as a first-class, composable JAX transform."""

__version__ = "0.1.0"
