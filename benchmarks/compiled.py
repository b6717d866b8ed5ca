"""Compiling and running a JAX train and inference step for a benchmark: what compare.py's and
seq2seq_peers.py's JAX rows share (each builds its own step functions and state)."""

import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp


def cast(tree, dtype):
    """`tree` with its floating-point leaves in `dtype`; integer leaves (token ids) kept."""

    def cast_leaf(a):
        return a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a

    return jax.tree.map(cast_leaf, tree)


def compile_steps(
    jit: Callable,
    train: Callable,
    state: list,
    batch: Sequence,
    infer: Callable,
    infer_args: Callable[[list], Sequence],
) -> dict:
    """Compiles `train(*state, *batch) -> new state` (the state donated) and
    `infer(*infer_args(state))` with `jit`, ahead of any timing.

    Returns `{"train", "infer"}`: functions that run one step to completion, `train` replacing
    `state`'s items in place; `"flops"`: XLA's count per step (None where it has none); and
    `"compile_seconds"` of each.
    """
    start = time.perf_counter()
    train_c = jit(train, donate_argnums=tuple(range(len(state)))).lower(*state, *batch).compile()
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    infer_c = jit(infer).lower(*infer_args(state)).compile()
    infer_seconds = time.perf_counter() - start

    def run_train():
        state[:] = train_c(*state, *batch)
        jax.block_until_ready(state)

    def run_infer():
        jax.block_until_ready(infer_c(*infer_args(state)))

    return {
        "train": run_train,
        "infer": run_infer,
        "flops": {"train": flops(train_c), "infer": flops(infer_c)},
        "compile_seconds": {"train": train_seconds, "infer": infer_seconds},
    }


def flops(compiled) -> float | None:
    """XLA's FLOP count of one call of `compiled`; a scan's body counts once, not per step."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):
        analysis = analysis[0] if analysis else {}
    return float(analysis["flops"]) if analysis and "flops" in analysis else None
