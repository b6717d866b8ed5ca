"""zoo: CNN and recurrent models as pure JAX functions, with training, data and benchmarks."""

__version__ = "0.1.0"
