"""`train.py` called in this process, as the CLI tests call it (no new interpreter per case)."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_module():
    sys.path.insert(0, ROOT)
    try:
        import train
    finally:
        sys.path.remove(ROOT)
    return train


def main(*args: str) -> int:
    """`train.main(args)`'s exit status, argparse's own errors (SystemExit) included."""
    try:
        return train_module().main(list(args))
    except SystemExit as exit:
        return exit.code
