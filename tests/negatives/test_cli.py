"""`mmpretrain negatives`: caption files and shard sets in, JSON lines and a per-type report out."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from mmpretrain.data.shard_writer import ShardWriter
from mmpretrain.negatives.report import read_samples

REPO = Path(__file__).resolve().parents[2]


def _cli():
    # Loaded from this checkout's data_tools/ (the installed mmpretrain.data_tools may map to another checkout).
    spec = importlib.util.spec_from_file_location("negatives_cli", REPO / "data_tools" / "negatives.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CAPTIONS = ["a large blue square left of a small green triangle\ta photo of a blue square and a green triangle",
            "two red circles above a yellow diamond", "a handwritten seven", "the number 3",
            "a small red circle right of a large blue square, and a green triangle"]


def test_report_and_rows_from_a_caption_file(tmp_path, capsys):
    source = tmp_path / "captions.txt"
    source.write_text("\n".join(CAPTIONS) + "\n")
    out, report = tmp_path / "neg.jsonl", tmp_path / "report.json"
    assert _cli().main([str(source), "--per-caption", "2", "--out", str(out), "--report", str(report),
                        "--filter-margin", "5", "--seed", "1"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["key"] for r in rows] == [f"line{i:06d}" for i in range(5)]
    assert rows[0]["positives"] == CAPTIONS[0].split("\t")
    assert all({"text", "type", "detail", "source", "blind_margin"} <= set(n) for r in rows for n in r["negatives"])
    summary = json.loads(report.read_text())
    assert summary["samples"] == 5 and summary["seed"] == 1
    count = summary["types"]["count"]
    assert count["captions"] == 6 and count["emitted"] >= 1 and count["not_applicable"] == 5
    for counts in summary["types"].values():
        assert {"captions", "emitted", "not_applicable", "reasons", "blind_accuracy", "pairs", "filtered"} <= set(counts)
    printed = capsys.readouterr().out
    assert "blind acc" in printed and "swap_relation" in printed
    # Same seed, same output.
    again = tmp_path / "again.jsonl"
    assert _cli().main([str(source), "--per-caption", "2", "--out", str(again), "--filter-margin", "5",
                        "--seed", "1"]) == 0
    assert again.read_text() == out.read_text()


def test_shards_and_bad_input(tmp_path, capsys):
    with ShardWriter(tmp_path / "shards", 2, prefix="s") as writer:
        for i, caption in enumerate(CAPTIONS):
            writer.write(f"k{i}", b"\x89PNG", "png", caption.split("\t"))
    samples = read_samples(str(tmp_path / "shards"))
    assert [key for key, _ in samples] == [f"k{i}" for i in range(5)]
    assert samples[0][1] == CAPTIONS[0].split("\t")
    assert _cli().main([str(tmp_path / "shards"), "--types", "swap_relation", "--limit", "3"]) == 0
    assert "swap_relation" in capsys.readouterr().out
    assert _cli().main([str(tmp_path / "shards"), "--types", "nonsense"]) == 2
    assert "unknown negative type 'nonsense'" in capsys.readouterr().err
    assert _cli().main([str(tmp_path / "missing")]) == 2
