"""zoo: CNN and recurrent models as pure JAX functions, with training, data and benchmarks."""

import importlib

__version__ = "0.1.0"

_SUBPACKAGES = ("data", "layers", "models", "runtime", "trained", "training", "weights")


def __getattr__(name: str):
    # `zoo.models`, `zoo.load`, `zoo.pretrained`, ... on first use: `import zoo` stays light.
    if name in _SUBPACKAGES:
        return importlib.import_module(f"zoo.{name}")
    if name == "load":
        from zoo.trained import load

        return load
    if name == "pretrained":
        from zoo.weights import pretrained

        return pretrained
    if name == "load_weights":
        from zoo.weights.files import load_weights

        return load_weights
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
