"""Evaluation: the results store (one SQLite row per result cell) and the metrics computed from cells."""

from robust_csc.evaluation.metrics import (
    ALEXNET_CLEAN_ERROR,
    ALEXNET_ERRORS,
    ALL_CORRUPTIONS,
    COMMON_CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    CorruptionErrors,
    accuracy_table,
    corruption_errors,
    imagenet_mce,
    summary,
)
from robust_csc.evaluation.store import CellKey, ResultsStore

__all__ = [
    "ALEXNET_CLEAN_ERROR",
    "ALEXNET_ERRORS",
    "ALL_CORRUPTIONS",
    "COMMON_CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "CellKey",
    "CorruptionErrors",
    "ResultsStore",
    "accuracy_table",
    "corruption_errors",
    "imagenet_mce",
    "summary",
]
