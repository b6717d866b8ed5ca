"""A per-epoch progress bar (tqdm) with the running loss, accuracy and examples/s.

The bar only reads the running metrics every `refresh_every` steps, since reading them is a host
sync that would otherwise stall the device after every step.
"""

import sys

from tqdm.auto import tqdm

from zoo.training.steps import Metrics, summarize_metrics


def on_terminal() -> bool:
    return sys.stderr.isatty()


class EpochProgress:
    """`with EpochProgress(...) as bar: bar.step(metrics)` once per train step; the bar goes to
    stderr and disappears when the epoch ends (its summary line is logged instead)."""

    def __init__(
        self,
        epoch: int,
        epochs: int,
        steps: int,
        batch_size: int,
        *,
        enabled: bool,
        refresh_every: int = 10,
    ):
        self.batch_size = batch_size
        self.refresh_every = refresh_every
        self.metrics: list[Metrics] = []
        self.bar = tqdm(
            total=steps * batch_size,
            desc=f"epoch {epoch}/{epochs}",
            unit="ex",
            unit_scale=True,
            leave=False,
            disable=not enabled,
            dynamic_ncols=True,
        )

    def __enter__(self) -> "EpochProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def step(self, metrics: Metrics) -> None:
        self.metrics.append(metrics)
        if self.bar.disable:
            return
        self.bar.update(self.batch_size)
        if len(self.metrics) % self.refresh_every == 0:
            recent = summarize_metrics(self.metrics[-self.refresh_every :])
            shown = {"loss": f"{recent['loss']:.4f}"}
            if "accuracy" in recent:
                shown["acc"] = f"{recent['accuracy']:.4f}"
            self.bar.set_postfix(shown, refresh=False)
