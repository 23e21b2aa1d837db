"""The written page: its plots and gallery entries exist, everything from the inputs is escaped, nothing is
fetched from elsewhere, the folder is written atomically and only replaced when asked; the CLI hooks."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from mmpretrain.report import cli
from mmpretrain.report.build import build_report
from tests.report.fixtures import (COLOURS, MISSING, MODELS, RETRIEVAL_AUDIO, RETRIEVAL_IMAGE, ZEROSHOT_LARGE,
                                   ZEROSHOT_SMALL, write_benchmark, write_run)


class _Elements(HTMLParser):
    """Every start tag's name, attributes and classes, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {key: value or "" for key, value in attrs}))


def _tags(html: str) -> list[tuple[str, dict[str, str]]]:
    parser = _Elements()
    parser.feed(html)
    return parser.tags


def test_every_image_of_the_page_is_a_png_file_in_its_folder(built_report: Path):
    html = built_report.read_text(encoding="utf-8")
    sources = [attrs["src"] for tag, attrs in _tags(html) if tag == "img"]
    assert sources and all(src.startswith("assets/") for src in sources)
    for src in set(sources):
        with Image.open(built_report.parent / src) as image:
            image.verify()
    pngs = {p.relative_to(built_report.parent).as_posix() for p in (built_report.parent / "assets").rglob("*.png")}
    assert pngs == set(sources)  # nothing drawn that the page does not show
    alts = [attrs.get("alt", "") for tag, attrs in _tags(html) if tag == "img"]
    assert all(alts)


def test_the_page_has_the_curves_eval_plots_tables_and_confusions(built_report: Path):
    html = built_report.read_text(encoding="utf-8")
    tags = _tags(html)
    for name in ("loss", "lr", "logit_scale", "samples_per_s", "skips"):
        assert f'src="assets/1-run-{name}.png"' in html
    assert html.count('src="assets/1-run-eval-') == 2  # one plot per eval task
    assert "metrics.jsonl: skipped 3 line(s)" in html and "results.jsonl: skipped 2 line(s)" in html
    heat_cells = [attrs for tag, attrs in tags if tag == "td" and "background" in attrs.get("style", "")]
    assert len(heat_cells) == len(MODELS) * (5 + 1)  # tasks + average
    assert "over 4 of 5 tasks" in html and 'src="assets/2-bench-heatmap.png"' in html
    for task, why in MISSING.items():
        assert task in html and why in html
    confusions = [attrs["src"] for tag, attrs in tags if tag == "img" and "-confusion-" in attrs.get("src", "")]
    assert len(confusions) == 2 * len(MODELS)
    assert html.count("30 of 40 classes shown") == len(MODELS)
    assert f"<strong>{ZEROSHOT_SMALL}</strong>" in html and f"<strong>{ZEROSHOT_LARGE}</strong>" in html


def test_the_gallery_shows_each_query_its_thumbnails_and_marks_the_correct_one(built_report: Path):
    html = built_report.read_text(encoding="utf-8")
    tags = _tags(html)
    hits = [attrs for tag, attrs in tags if tag == "div" and "hit" in attrs.get("class", "").split()]
    # 3 models x 4 queries x 5 hits, plus the correct image of each query that missed it, shown apart.
    shown = [hit for hit in hits if hit.get("title")]
    assert len(shown) == len(MODELS) * 4 * 5
    thumbs = [attrs for tag, attrs in tags if tag == "img" and "/thumbs/" in attrs.get("src", "")]
    assert len({attrs["src"] for attrs in thumbs}) == len(COLOURS)  # one file per distinct image
    correct = [hit for hit in shown if "correct" in hit["class"].split()]
    assert correct and all(hit["title"].startswith("img-") for hit in correct)
    for colour in list(COLOURS)[:4]:
        assert f"a {colour} square &lt;b&gt;bold&lt;/b&gt;" in html  # escaped, not bold
    assert "<b>bold</b>" not in html
    assert f"{RETRIEVAL_IMAGE} &mdash; {MODELS[1]}" in html or f"{RETRIEVAL_IMAGE} — {MODELS[1]}" in html
    # Audio: clip names in a list, the correct one marked.
    clips = [attrs for tag, attrs in tags if tag == "li" and "clip" in attrs.get("class", "").split()]
    assert len(clips) == 2 * (3 + 2) and sum("correct" in c["class"].split() for c in clips) == 2 * 2
    assert "dog_bark_02.flac" in html and RETRIEVAL_AUDIO in html


def test_the_page_needs_nothing_from_elsewhere(built_report: Path):
    html = built_report.read_text(encoding="utf-8")
    links = [value for _, attrs in _tags(html) for key, value in attrs.items() if key in ("src", "href")]
    assert all(link.startswith(("assets/", "#")) or link == "data:," for link in links), links
    assert "<script" not in html and "@import" not in html and "url(" not in html
    assert "Fixture report &lt;&amp;&gt;" in html


def test_default_out_is_inside_the_first_input_and_is_not_replaced_without_overwrite(tmp_path: Path):
    run = write_run(tmp_path / "run", steps=20, garbage=False)
    page = build_report([run])
    assert page == run / "report" / "index.html" and page.is_file()
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_report([run])
    before = page.stat().st_mtime_ns
    assert build_report([run], overwrite=True) == page and page.stat().st_mtime_ns >= before
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "metrics.jsonl", "report", "results.json"]


def test_overwrite_never_replaces_a_folder_that_is_not_a_report(tmp_path: Path):
    run = write_run(tmp_path / "run", steps=20, garbage=False)
    bench = write_benchmark(tmp_path / "bench", garbage=False)
    for folder in (run, bench):
        with pytest.raises(FileExistsError, match="not a report folder"):
            build_report([run], folder, overwrite=True)
    assert (run / "metrics.jsonl").is_file() and (bench / "results.jsonl").is_file()


def test_a_failure_while_drawing_leaves_the_old_report_and_no_temporary_folder(tmp_path: Path, monkeypatch):
    from mmpretrain.report import page

    run = write_run(tmp_path / "run", steps=20, garbage=False)
    out = tmp_path / "out"
    build_report([run], out)
    old = (out / "index.html").read_text(encoding="utf-8")

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(page, "render", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        build_report([run], out, title="new", overwrite=True)
    assert (out / "index.html").read_text(encoding="utf-8") == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]


def test_cli_hooks_into_a_subcommand_table_and_reports_errors_in_one_line(tmp_path: Path, capsys):
    parser = argparse.ArgumentParser(prog="mmpretrain")
    commands = parser.add_subparsers(dest="command", required=True)
    cli.add_parser(commands)
    run = write_run(tmp_path / "run", steps=20, garbage=False)
    args = parser.parse_args(["report", str(run), "--out", str(tmp_path / "page"), "--title", "T"])
    assert (args.command, args.inputs, args.overwrite, args.title) == ("report", [str(run)], False, "T")
    assert cli.run(args) == 0
    assert capsys.readouterr().out.strip() == f"report written to {tmp_path / 'page' / 'index.html'}"
    assert "<title>T</title>" in (tmp_path / "page" / "index.html").read_text(encoding="utf-8")

    assert cli.main([str(tmp_path / "nothing-here")]) == 2
    assert cli.main([str(run), "--out", str(tmp_path / "page")]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and all(line.startswith("mmpretrain report: error: ") for line in errors)
    assert "does not exist" in errors[0] and "--overwrite" in errors[1]


def test_the_cli_module_imports_neither_matplotlib_nor_jinja2():
    # mmpretrain's parser is built on every command: the report's hooks must not make `mmpretrain train` slower.
    code = ("import sys, mmpretrain.report.cli; "
            "print(sorted(m for m in ('matplotlib', 'jinja2') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_not_finite_values_and_a_missing_section_do_not_break_the_page(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": "nan", "lr": 0.1}\n{"step": 2, "loss": "inf", "lr": 0.1}\n'
                                       '{"step": 3, "loss": 2.0, "lr": 0.1}\n')
    html = build_report([run], tmp_path / "out").read_text(encoding="utf-8")
    assert 'src="assets/1-run-loss.png"' in html and "Not logged: Logit scale, Throughput, Skips." in html
    assert re.search(r"No evaluation logged", html) and "config.yaml: absent" in html
