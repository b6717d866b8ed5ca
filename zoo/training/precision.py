"""Dynamic loss scaling for float16 training (Micikevicius et al. 2018, as in `jmp`).

float16 gradients underflow to zero below 6e-8, so the loss is multiplied by `scale` before
differentiating and the gradients divided by it after. A step whose scaled gradients overflow
(inf or NaN) is skipped and halves the scale; `period` finite steps in a row double it.
bfloat16 has float32's exponent range and needs none of this: its scale stays 1.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

INITIAL_SCALE = 2.0**15
PERIOD = 2000  # finite steps before the scale doubles
MIN_SCALE = 1.0


class LossScale(NamedTuple):
    """`scale`: the factor on the loss, float32 `()`; `good_steps`: finite steps since it last
    changed, int32 `()`. A pytree, carried in the train state and its checkpoints."""

    scale: jax.Array
    good_steps: jax.Array


def initial_loss_scale(dynamic: bool) -> LossScale:
    scale = INITIAL_SCALE if dynamic else 1.0
    return LossScale(jnp.asarray(scale, jnp.float32), jnp.zeros((), jnp.int32))


def unscale(grads, loss_scale: LossScale):
    """The gradients of the scaled loss, divided back to those of the loss, in float32."""
    return jax.tree.map(lambda g: g.astype(jnp.float32) / loss_scale.scale, grads)


def update_loss_scale(loss_scale: LossScale, finite: jax.Array, period: int = PERIOD) -> LossScale:
    """Halves the scale after a non-finite step (not below `MIN_SCALE`), doubles it after
    `period` finite ones."""
    grown = loss_scale.good_steps + 1 >= period
    scale = jnp.where(
        finite,
        jnp.where(grown, loss_scale.scale * 2, loss_scale.scale),
        jnp.maximum(loss_scale.scale / 2, MIN_SCALE),
    )
    good_steps = jnp.where(finite & ~grown, loss_scale.good_steps + 1, 0)
    return LossScale(scale.astype(jnp.float32), good_steps.astype(jnp.int32))
