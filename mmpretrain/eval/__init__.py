"""Evaluation: zero-shot classification, image-text retrieval, and the harness that runs them from config."""

from mmpretrain.eval.harness import EvalConfig, EvalTaskConfig, format_table, run_eval, write_results
from mmpretrain.eval.retrieval import retrieval_metrics
from mmpretrain.eval.templates import get_templates
from mmpretrain.eval.zeroshot import build_classifier, zeroshot_metrics

__all__ = [
    "EvalConfig", "EvalTaskConfig", "build_classifier", "format_table", "get_templates", "retrieval_metrics",
    "run_eval", "write_results", "zeroshot_metrics",
]
