"""The independent ground truth now lives in load/ground_truth.py (the load harness verifies with it too);
this module re-exports it so the engine tests keep importing `reference`."""

from load.ground_truth import FIELDS, expected, window_totals

__all__ = ["FIELDS", "expected", "window_totals"]
