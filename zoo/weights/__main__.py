"""`python -m zoo.weights [NAME ...]`: retrain the shipped weights from their presets."""

import sys

from zoo.weights import METRICS, build

for name in sys.argv[1:] or sorted(METRICS):
    build(name)
