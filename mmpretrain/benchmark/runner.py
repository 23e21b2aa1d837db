"""`mmpretrain benchmark`: every model on every task of a suite, each dataset streamed once per preprocessing.

For each task whose data are present: the models not yet scored on it (results.jsonl is the resume state) are
grouped by preprocessing; each group gets one streamed pass (eval/stream.py) that decodes and transforms each
image once and embeds it with every model of the group; then each model's text side (a zero-shot classifier,
cached per (model, class names, templates), or the captions) and its metrics. Compositional tasks go through the
eval harness, one model at a time (their sets are small). Absent data make a task *missing*, reported in
missing.json and the log, not failed, unless `strict`.

Under torchrun each rank reads its share of every set; features are gathered so that all ranks compute the same
metrics, and rank 0 writes.
"""

from __future__ import annotations

import base64
import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from mmpretrain.benchmark import results as out_files
from mmpretrain.benchmark.classnames import load_classnames
from mmpretrain.benchmark.models import BenchModel, load_bench_model
from mmpretrain.eval.sources import (ClipBenchmarkSource, FolderSource, ShardSource, Source,
                                          decode_record_image, read_lines)
from mmpretrain.eval.stream import StreamResult, fetch_records, stream_features
from mmpretrain.benchmark.suite import Suite, SuiteTask, data_present
from mmpretrain.engine.dist import broadcast, detect_process, init_distributed
from mmpretrain.engine.local import resolve_device
from mmpretrain.errors import ConfigError, DataError
from mmpretrain.eval.harness import encode_texts
from mmpretrain.eval.retrieval import cross_modal_metrics
from mmpretrain.eval.templates import TEMPLATE_SETS, get_templates
from mmpretrain.eval.zeroshot import build_classifier, zeroshot_metrics

log = logging.getLogger(__name__)


@dataclass
class BenchmarkOptions:
    batch_size: int = 64
    workers: int = 2
    device: str = "auto"
    strict: bool = False         # absent data is an error instead of a missing task
    progress: bool = True
    amp: bool = True             # bf16 autocast on CUDA (never on CPU: fp32 there, as clip_benchmark --no_amp)
    gallery_queries: int = 4     # retrieval: text queries kept for the report's gallery
    gallery_top: int = 5


def _text_list(value: Any, what: str, task: SuiteTask) -> list[str]:
    """A suite's class-name or template value: a list, a file (one per line), or a shipped name."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    path = Path(str(value))
    if path.is_file():
        return read_lines(path)
    if what == "templates" and str(value) in TEMPLATE_SETS:
        return get_templates(str(value))
    if what == "classnames":
        return load_classnames(str(value))  # a shipped list; an unknown name is a one-line error listing them
    raise ConfigError(f"task {task.name!r}: templates {value!r} is neither a list, a file, nor a template set "
                      f"({', '.join(sorted(TEMPLATE_SETS))})")


def open_source(task: SuiteTask) -> Source:
    """The task's dataset reader (its data were found present)."""
    classnames = _text_list(task.classnames, "classnames", task)
    if task.format == "clip_benchmark":
        return ClipBenchmarkSource(task.path, task.split, task.kind)
    if task.format == "shards":
        return ShardSource(task.path, task.kind, classnames, task.label_key)
    if task.format == "folder":
        return FolderSource(task.path, classnames)
    from mmpretrain.benchmark import sources_files
    if task.format == "torchvision":
        return sources_files.TorchvisionSource(str(task.dataset), task.path, task.split, classnames)
    return sources_files.KarpathySource(task.path, str(task.images), task.split)


def groups_by_preprocess(models: Sequence[BenchModel]) -> list[list[BenchModel]]:
    """Models that see the same pixels (equal transforms) share one pass over the data."""
    groups: dict[str, list[BenchModel]] = {}
    for model in models:
        groups.setdefault(model.preprocess_key, []).append(model)
    return list(groups.values())


class Benchmark:
    def __init__(self, suite: Suite, models: Sequence[BenchModel], out: Path, options: BenchmarkOptions,
                 device: torch.device, rank: int = 0) -> None:
        self.suite, self.models, self.out, self.options, self.device = suite, list(models), out, options, device
        self.rank = rank
        self.classifiers: dict[tuple[str, tuple[str, ...], tuple[str, ...]], torch.Tensor] = {}

    def run(self, missing: dict[str, str]) -> list[dict[str, Any]]:
        # Rank 0's view of what is done: every rank must walk the same (task, group) passes, as each is a
        # collective, even where the output directory is not shared between nodes.
        done = broadcast(out_files.done_pairs(self.out) if self.rank == 0 else None)
        lines: list[dict[str, Any]] = []
        for task in self.suite.tasks:
            if task.name in missing:
                continue
            todo = [m for m in self.models if (m.label, task.name) not in done]
            if len(todo) < len(self.models):
                log.info("task %s: %d model(s) already scored (results.jsonl), skipped", task.name,
                         len(self.models) - len(todo))
            if not todo:
                continue
            if task.kind == "compositional":
                for model in todo:
                    lines.append(self._compositional(task, model))
                continue
            source = open_source(task)
            for group in groups_by_preprocess(todo):
                lines += self._streamed(task, source, group)
        return lines

    def _write(self, line: dict[str, Any]) -> dict[str, Any]:
        if self.rank == 0:
            out_files.append_line(self.out, line)
        return line

    def _streamed(self, task: SuiteTask, source: Source, group: list[BenchModel]) -> list[dict[str, Any]]:
        start = time.perf_counter()
        opts = self.options
        for model in group:
            model.model.to(self.device)
        result = stream_features(source, group, group[0].transform, opts.batch_size, opts.workers, self.device,
                                 opts.progress, task.name, task.max_samples, opts.amp, shard_over_ranks=True)
        if not result.keys:
            raise DataError(f"task {task.name}: no usable sample in {task.path} ({_skip_summary(result)})")
        if sum(result.skips.by_reason.values()):
            log.warning("task %s: skipped %s", task.name, _skip_summary(result))
        shared = (time.perf_counter() - start) / len(group)  # the pass is shared: each model's part of it
        lines, details = [], {}
        for model in group:
            model_start = time.perf_counter()
            if task.kind == "zeroshot":
                flat, details[model.label] = self._zeroshot(task, source, model, result)
            else:
                flat, details[model.label] = self._retrieval(task, model, result)
            skipped = int(sum(result.skips.by_reason.values()))
            seconds = shared + time.perf_counter() - model_start
            line = out_files.result_line(model.label, model.spec, task.name, task.kind, {**flat,
                                         "skipped": float(skipped)}, task.main, self.suite.name,
                                         len(result.keys), skipped, seconds)
            lines.append(self._write(line))
            log.info("%s on %s: %s %.4f (%d samples, %.1f s)", model.label, task.name, task.main,
                     line["metrics"].get(task.main, float("nan")), len(result.keys), seconds)
        if self.rank == 0:
            if task.kind == "retrieval":
                self._add_thumbnails(source, result, list(details.values()))
            for label, detail in details.items():
                out_files.write_json(self.out / "details" / out_files.safe_name(label) /
                                     f"{out_files.safe_name(task.name)}.json", detail)
        return lines

    def _classifier(self, model: BenchModel, classnames: list[str], templates: list[str]) -> torch.Tensor:
        key = (model.label, tuple(classnames), tuple(templates))
        if key not in self.classifiers:
            with torch.inference_mode():
                self.classifiers[key] = build_classifier(model.model, model.tokenizer, classnames, templates,
                                                         self.text_batch, self.device)
        return self.classifiers[key]

    def _zeroshot(self, task: SuiteTask, source: Source, model: BenchModel, result: StreamResult
                  ) -> tuple[dict[str, float], dict[str, Any]]:
        classnames = _text_list(task.classnames, "classnames", task) or source.classnames
        templates = _text_list(task.templates, "templates", task) or source.templates
        if not classnames or not templates:
            raise ConfigError(f"task {task.name}: zero-shot needs class names and templates; the dataset carries "
                              f"{len(classnames)} and {len(templates)}: name them in the suite")
        classifier = self._classifier(model, classnames, templates)
        features, labels = result.features[model.label], torch.tensor(result.labels)
        flat = zeroshot_metrics(features, labels, classifier)
        predicted = (features @ classifier).argmax(dim=1)
        confusion = torch.zeros(len(classnames), len(classnames), dtype=torch.long)
        confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
        return flat, {"kind": "zeroshot", "classnames": classnames, "confusion": confusion.tolist()}

    @property
    def text_batch(self) -> int:
        # Texts are short: large batches cost little memory, and each forward has a fixed cost (on a busy CPU,
        # batches of 64 captions took 6x longer in all than one batch of 500).
        return max(self.options.batch_size, 256)

    def _retrieval(self, task: SuiteTask, model: BenchModel, result: StreamResult
                   ) -> tuple[dict[str, float], dict[str, Any]]:
        texts = [caption for captions in result.captions for caption in captions]
        owner = torch.tensor([i for i, captions in enumerate(result.captions) for _ in captions])
        with torch.inference_mode():
            text_features = encode_texts(model.model, texts, model.tokenizer, self.text_batch, self.device)
        image_features = result.features[model.label]
        flat = cross_modal_metrics("image", image_features, torch.arange(len(image_features)), "text",
                                   text_features, owner, ks=task.recall_k)
        return flat, self._gallery(result, texts, owner, text_features, image_features)

    def _gallery(self, result: StreamResult, texts: list[str], owner: torch.Tensor, text_features: torch.Tensor,
                 image_features: torch.Tensor) -> dict[str, Any]:
        """A few text queries (evenly spread), their top images, the right one marked: the report's gallery
        (thumbnails added once for the whole group, `_add_thumbnails`)."""
        count = min(self.options.gallery_queries, len(texts))
        picks = [round(i * (len(texts) - 1) / max(count - 1, 1)) for i in range(count)]
        top = min(self.options.gallery_top, len(image_features))
        queries, shown = [], set()
        for index in picks:
            best = (text_features[index] @ image_features.T).topk(top).indices.tolist()
            shown.update(best + [int(owner[index])])
            queries.append({"text": texts[index], "top": [result.keys[i] for i in best],
                            "correct": [result.keys[int(owner[index])]]})
        return {"kind": "retrieval", "modality": "image", "queries": queries, "shown": sorted(shown)}

    @staticmethod
    def _add_thumbnails(source: Source, result: StreamResult, galleries: list[dict[str, Any]]) -> None:
        """The images the group's galleries show, read again once (a few per model) and made thumbnails."""
        shown = sorted({i for gallery in galleries for i in gallery.pop("shown")})
        records = fetch_records(source, [result.addresses[i] for i in shown])
        thumbnails = {record.key: _thumbnail(record) for record in records.values()}
        for gallery in galleries:
            keys = {key for query in gallery["queries"] for key in query["top"] + query["correct"]}
            gallery["thumbnails"] = {key: thumbnails[key] for key in sorted(keys) if key in thumbnails}

    def _compositional(self, task: SuiteTask, model: BenchModel) -> dict[str, Any]:
        from mmpretrain.eval.harness import EvalConfig, EvalTaskConfig, run_eval

        start = time.perf_counter()
        config = EvalConfig(tasks=[EvalTaskConfig(name=task.name, kind="compositional", format=task.format,
                                                  data=task.path, images=task.images, subsets=list(task.subsets),
                                                  max_samples=task.max_samples)],
                            batch_size=self.options.batch_size)
        model.model.to(self.device)
        results = run_eval(model.model, model.transform, model.tokenizer, config, device=self.device,
                           progress=self.options.progress)
        prefix = f"compositional/{task.name}/"
        flat = {key[len(prefix):]: value for key, value in results.items()}
        line = out_files.result_line(model.label, model.spec, task.name, "compositional", flat, task.main,
                                     self.suite.name, 0, int(flat.get("skipped", 0)), time.perf_counter() - start)
        return self._write(line)


def _thumbnail(record: Any, size: int = 128) -> str:
    image = decode_record_image(record)
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _skip_summary(result: StreamResult) -> str:
    reasons = result.skips.by_reason.most_common()
    return ", ".join(f"{r} {n}" for r, n in reasons) or "no samples found"


def run_benchmark(suite: Suite, model_specs: Sequence[str], out: Path,
                  options: Optional[BenchmarkOptions] = None) -> dict[str, Any]:
    """Score every model of `model_specs` on every task of `suite`, writing `out` (see benchmark/results.py).
    Returns {"lines": this run's result lines, "missing": {task: why}}."""
    options = options or BenchmarkOptions()
    if not model_specs:
        raise ConfigError("give at least one --model (a run directory, an export, or an open_clip name[:weights])")
    info = detect_process()
    init_distributed(info)
    rank = dist.get_rank() if dist.is_initialized() else 0  # also in a group its caller made
    # Rank 0 decides which tasks are missing, so that all ranks run the same tasks
    missing = broadcast({task.name: why for task in suite.tasks if (why := data_present(task)) is not None}
                        if rank == 0 else None)
    if missing and options.strict:
        first = next(iter(missing.items()))
        raise DataError(f"--strict: {len(missing)} task(s) have no data, e.g. {first[0]}: {first[1]}")
    device = resolve_device(options.device, info.local_rank)
    models = [load_bench_model(spec) for spec in model_specs]
    labels = [m.label for m in models]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"two models have the same label ({labels}): name them with LABEL=SPEC")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        out_files.drop_torn_line(out)
        out_files.write_json(out / "missing.json", missing)
        for name, why in missing.items():
            log.warning("task %s: missing (%s)", name, why)
    lines = Benchmark(suite, models, out, options, device, rank).run(missing)
    if rank == 0:
        tasks = [t.name for t in suite.tasks if t.name not in missing]
        out_files.write_tables(out, labels, tasks, {t.name: t.main for t in suite.tasks})
        out_files.write_model_results(out, labels)
    if dist.is_initialized():
        dist.barrier()
    return {"lines": lines, "missing": missing}
