"""Model registry: `create(name, **options)` builds a Flax module, `names()` lists them."""

import dataclasses

import flax.linen as nn

from zoo.models.cnn import ConvNet, SeedCNN

_MODELS: dict[str, type[nn.Module]] = {
    "cnn": SeedCNN,
    "convnet": ConvNet,
}


def names() -> list[str]:
    """The registered model names."""
    return sorted(_MODELS)


def options(name: str) -> list[str]:
    """The options `create(name, ...)` accepts."""
    return [f.name for f in dataclasses.fields(_lookup(name)) if f.name not in ("parent", "name")]


def create(name: str, **opts) -> nn.Module:
    """Builds the model registered as `name` with the given hyperparameters.

    Raises:
      ValueError: for an unknown name or option, naming the valid ones.
    """
    valid = options(name)
    unknown = sorted(set(opts) - set(valid))
    if unknown:
        raise ValueError(
            f"model {name!r} has no option {', '.join(unknown)}; valid options: {', '.join(valid)}"
        )
    return _lookup(name)(**opts)


def _lookup(name: str) -> type[nn.Module]:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose from: {', '.join(names())}")
    return _MODELS[name]


__all__ = ["ConvNet", "SeedCNN", "create", "names", "options"]
