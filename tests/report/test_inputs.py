"""Reading the report's inputs: cut and malformed lines, missing files, the benchmark layout, safe_name."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mmpretrain.errors import ConfigError
from mmpretrain.report import safe_name
from mmpretrain.report.inputs import (BenchmarkInput, RetrievalDetail, RunInput, ZeroshotDetail, decode_thumbnail,
                                      read_input, read_jsonl, step_series)
from mmpretrain.report.tables import (confused_classes, eval_series, eval_skips, heat_rows, results_tables,
                                      top_confusions, training_panels)
from tests.report.fixtures import (COMPOSITIONAL, MISSING, MODELS, RETRIEVAL_AUDIO, RETRIEVAL_IMAGE, ZEROSHOT_LARGE,
                                   ZEROSHOT_SMALL, png_data_uri, write_benchmark, write_run)


def test_read_jsonl_skips_cut_and_non_object_lines_and_says_which(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1, "loss": 2.0}\n\n{"step": 2, "lo\n[1]\n{"step": 3, "loss": "nan"}\n\xff\xfe{"step"\n'
                     b'{"step": 4, "loss": 1.0')
    records, notes = read_jsonl(path)
    assert [r["step"] for r in records] == [1, 3]
    assert len(notes) == 1 and "skipped 4 line(s)" in notes[0] and "line 3, 4, 6, 7" in notes[0], notes


def test_step_series_reads_non_finite_strings_and_lets_a_resumed_step_win():
    records = [{"step": 10, "loss": 3.0, "lr": 0.1}, {"step": 20, "loss": "nan"}, {"step": 30, "loss": "inf"},
               {"step": 20, "loss": 1.5},  # a resumed run logs step 20 again: this is the run that went on
               {"loss": 9.0}, {"step": "40", "loss": 1.0}, {"step": 50, "loss": True, "name": "x"}]
    series, notes = step_series(records)
    assert series["loss"][0] == (10, 3.0) and series["loss"][1] == (20, 1.5) and math.isinf(series["loss"][2][1])
    assert [step for step, _ in series["loss"]] == [10, 20, 30]  # booleans and strings are not values
    assert "name" not in series and series["lr"] == [(10, 0.1)]
    assert notes == ["metrics.jsonl: skipped 2 record(s) without an integer step"]


def test_a_run_directory_reads_its_series_results_and_config(tmp_path: Path):
    run = read_input(write_run(tmp_path / "run"))
    assert isinstance(run, RunInput) and run.name == "tiny-run"
    assert run.summary["model"] == "mmp-tiny-rn" and run.summary["towers"] == "image, text, audio"
    assert [step for step, _ in run.series["loss"]] == [10, 20, 30, 40, 50, 60]  # the cut line at step 70 is gone
    assert "skipped 3 line(s)" in run.notes[0]
    assert run.results["results.json"]["zeroshot/digits/top1"] == 0.93
    assert set(eval_series(run.series)) == {"zeroshot/digits", "retrieval/shapes"}
    assert set(eval_series(run.series)["zeroshot/digits"]) == {"top1", "top5", "mean_per_class_recall"}
    assert eval_skips(run.series) == {"zeroshot/digits": 2.0}
    panels, absent = training_panels(run.series)
    assert [p.slug for p in panels] == ["loss", "lr", "logit_scale", "samples_per_s", "skips"] and absent == []
    assert set(panels[0].curves) == {"total", "pair image_text", "pair audio_text"}
    assert set(panels[2].curves) == {"pair image_text", "pair audio_text"}  # two pairs: each one's scale


def test_a_run_with_only_its_config_or_broken_files_is_still_a_page(tmp_path: Path):
    (tmp_path / "config.yaml").write_text("run_name: [unclosed\n")
    (tmp_path / "results.json").write_text('{"zeroshot/x/top1": 0.5')
    run = read_input(tmp_path)
    assert isinstance(run, RunInput) and run.series == {} and run.results == {} and run.name == tmp_path.name
    text = " | ".join(run.notes)
    assert "config.yaml: not valid YAML" in text and "metrics.jsonl: absent" in text
    assert "results.json: not valid JSON" in text
    (tmp_path / "metrics.jsonl").write_text("")
    assert "metrics.jsonl: no metrics logged yet" in read_input(tmp_path).notes


def test_a_benchmark_directory_reads_rows_missing_tasks_and_details(tmp_path: Path):
    bench = read_input(write_benchmark(tmp_path / "bench"))
    assert isinstance(bench, BenchmarkInput)
    assert bench.models == MODELS and bench.suites == ["tiny-suite"]
    assert bench.tasks == [ZEROSHOT_SMALL, ZEROSHOT_LARGE, RETRIEVAL_IMAGE, RETRIEVAL_AUDIO, COMPOSITIONAL]
    assert bench.rows[(MODELS[0], ZEROSHOT_SMALL)].main_value == 0.5  # the later line replaced the 0.01
    assert bench.rows[(MODELS[1], RETRIEVAL_IMAGE)].main_metric == "image_retrieval_recall@1"
    assert bench.missing == MISSING
    assert "results.jsonl: skipped 2 line(s)" in bench.notes[0] and "line 4, 19" in bench.notes[0]
    small = bench.details[(MODELS[2], ZEROSHOT_SMALL)]
    assert isinstance(small, ZeroshotDetail) and len(small.classnames) == 6 and len(small.confusion) == 6
    image = bench.details[(MODELS[0], RETRIEVAL_IMAGE)]
    assert isinstance(image, RetrievalDetail) and len(image.queries) == 4 and len(image.thumbnails) == 6
    audio = bench.details[(MODELS[1], RETRIEVAL_AUDIO)]
    assert isinstance(audio, RetrievalDetail) and audio.modality == "audio" and audio.thumbnails == {}
    assert (MODELS[2], RETRIEVAL_AUDIO) not in bench.rows
    (*_, average, note), = [row for row in heat_rows(bench) if row[0] == MODELS[2]]
    assert note == "over 4 of 5 tasks" and average.value == pytest.approx((0.9 + 0.8 + 0.9 + 0.8) / 4)


def test_unusable_details_are_notes_not_errors(tmp_path: Path):
    folder = write_benchmark(tmp_path / "bench", garbage=False)
    details = folder / "details" / safe_name(MODELS[0])
    (details / f"{ZEROSHOT_SMALL}.json").write_text(json.dumps({"kind": "zeroshot", "classnames": ["a", "b"],
                                                                "confusion": [[1, 2]]}))  # not square
    (details / f"{ZEROSHOT_LARGE}.json").write_text("{not json")
    retrieval = json.loads((details / f"{RETRIEVAL_IMAGE}.json").read_text())
    retrieval["thumbnails"]["img-red"] = "data:image/svg+xml;base64,PHN2Zz4="   # not a raster image
    retrieval["thumbnails"]["img-blue"] = "javascript:alert(1)"
    retrieval["queries"].append({"text": 3})
    (details / f"{RETRIEVAL_IMAGE}.json").write_text(json.dumps(retrieval))
    bench = read_input(folder)
    assert isinstance(bench, BenchmarkInput)
    assert (MODELS[0], ZEROSHOT_SMALL) not in bench.details and (MODELS[0], ZEROSHOT_LARGE) not in bench.details
    image = bench.details[(MODELS[0], RETRIEVAL_IMAGE)]
    assert isinstance(image, RetrievalDetail) and set(image.thumbnails) == {"img-green", "img-yellow", "img-purple",
                                                                            "img-orange"}
    text = " | ".join(bench.notes)
    assert f"{safe_name(MODELS[0])}/{ZEROSHOT_SMALL}.json: not a zero-shot" in text
    assert f"{ZEROSHOT_LARGE}.json: not valid JSON" in text
    assert "2 thumbnail(s) are not a base64 PNG/JPEG/GIF/WebP data URI" in text
    assert "skipped 1 query(ies)" in text


def test_models_sharing_a_details_folder_are_said_not_guessed(tmp_path: Path):
    folder = tmp_path / "bench"
    folder.mkdir()
    lines = [{"dataset": "t", "model": label, "task": "zeroshot_classification", "metrics": {"acc1": 0.5}}
             for label in ("a:b", "a/b")]
    (folder / "results.jsonl").write_text("\n".join(map(json.dumps, lines)))
    bench = read_input(folder)
    assert isinstance(bench, BenchmarkInput) and bench.details == {}
    assert bench.rows[("a/b", "t")].main_value == 0.5  # no mmpretrain block: CLIP_benchmark's acc1
    assert any("share the details folder 'a_b'" in note for note in bench.notes)


def test_anything_else_is_one_error_line_naming_the_path(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_input(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    for path in (tmp_path, tmp_path / "notes.txt"):
        with pytest.raises(ConfigError) as error:
            read_input(path)
        message = str(error.value)
        assert str(path) in message and "metrics.jsonl" in message and "results.jsonl" in message
        assert "\n" not in message
    (tmp_path / "metrics.jsonl").write_text("")
    (tmp_path / "results.jsonl").write_text("")
    with pytest.raises(ConfigError, match="has both"):
        read_input(tmp_path)


@pytest.mark.parametrize("label, expected", [
    ("ViT-B-32_openai", "ViT-B-32_openai"), ("ViT-B-32:openai", "ViT-B-32_openai"),
    ("hf-hub:timm/ViT-B-16-SigLIP", "hf-hub_timm_ViT-B-16-SigLIP"), ("../../etc", "_._.._etc"), ("..", "_."),
    (".hidden", "_hidden"), ("", "_"), ("modèle ü", "mod_le__"), ("a b\\c", "a_b_c")])
def test_safe_name(label: str, expected: str):
    assert safe_name(label) == expected


def test_safe_name_keeps_long_labels_apart_and_short_enough():
    a, b = safe_name("x" * 300 + "a"), safe_name("x" * 300 + "b")
    assert a != b and len(a) == len(b) == 120 and a.startswith("x" * 107 + "-")


def test_thumbnails_must_be_base64_raster_images():
    assert decode_thumbnail(png_data_uri((1, 2, 3))).extension == "png"  # type: ignore[union-attr]
    for bad in ("data:image/png;base64,not base64!", "data:image/png;base64,aGVsbG8=", "https://example.com/x.png",
                "data:text/html;base64,PGI+", None, 3):
        assert decode_thumbnail(bad) is None, bad


def test_confusion_cap_keeps_the_most_confused_classes_in_order():
    n = 8
    matrix = [[10 if i == j else 0 for j in range(n)] for i in range(n)]
    matrix[6][1] = 5
    matrix[3][6] = 2
    assert confused_classes(matrix, cap=3) == [1, 3, 6]
    assert confused_classes(matrix, cap=8) == list(range(8))
    assert top_confusions([str(i) for i in range(n)], matrix, limit=5) == [("6", "1", 5), ("3", "6", 2)]


def test_results_tables_are_wide_when_tasks_share_metrics_and_long_otherwise():
    tables = results_tables({"zeroshot/a/top1": 0.5, "zeroshot/a/skipped": 1.0, "zeroshot/b/top1": 0.7,
                             "zeroshot/b/skipped": 0.0, "retrieval/x/image_to_text_R@1": 0.3,
                             "retrieval/y/audio_to_image_class_R@1": 0.2, "odd": 1.0})
    by_kind = {t.kind: t for t in tables}
    assert by_kind["zeroshot"].metrics == ["top1", "skipped"] and by_kind["zeroshot"].rows[1] == ("b", [0.7, 0.0])
    assert by_kind["retrieval"].metrics == [] and by_kind["retrieval"].long_rows[0] == ("x", [("image_to_text_R@1",
                                                                                               0.3)])
    assert by_kind["other"].rows == [("odd", [1.0])]


def test_metrics_are_listed_with_their_numbers_read_as_numbers():
    tables = results_tables({"retrieval/x/R@10": 0.9, "retrieval/x/R@5": 0.8, "retrieval/x/R@1": 0.5})
    assert tables[0].metrics == ["R@1", "R@5", "R@10"]
    series = eval_series({f"eval/retrieval/x/R@{k}": [(1, 0.5)] for k in (10, 1, 5)})
    assert list(series["retrieval/x"]) == ["R@1", "R@5", "R@10"]
