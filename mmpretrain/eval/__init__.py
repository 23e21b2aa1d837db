"""Evaluation: zero-shot classification (image or audio), cross-modal retrieval between any two modalities, and
the harness that runs them from config."""

from mmpretrain.eval.harness import (EvalConfig, EvalTaskConfig, check_task_modalities, format_table, run_eval,
                                     write_results)
from mmpretrain.eval.modalities import MODALITIES, EvalInputs, Modality
from mmpretrain.eval.retrieval import cross_modal_metrics, recall_at_k, retrieval_metrics
from mmpretrain.eval.templates import get_templates
from mmpretrain.eval.zeroshot import build_classifier, zeroshot_metrics

__all__ = [
    "EvalConfig", "EvalInputs", "EvalTaskConfig", "MODALITIES", "Modality", "build_classifier",
    "check_task_modalities", "cross_modal_metrics", "format_table", "get_templates", "recall_at_k",
    "retrieval_metrics", "run_eval", "write_results", "zeroshot_metrics",
]
