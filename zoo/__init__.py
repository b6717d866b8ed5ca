"""zoo: CNN and recurrent models as pure JAX functions, with training, data and benchmarks."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `zoo.load` and `zoo.pretrained` without importing the training stack on `import zoo`.
    if name == "load":
        from zoo.trained import load

        return load
    if name == "pretrained":
        from zoo.weights import pretrained

        return pretrained
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
