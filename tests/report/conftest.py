"""One report of the fixture inputs, built once for the page and browser tests (drawing takes seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmpretrain.report.build import build_report
from tests.report.fixtures import write_benchmark, write_run


@pytest.fixture(scope="session")
def report_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("report-inputs")
    return write_run(root / "run"), write_benchmark(root / "bench")


@pytest.fixture(scope="session")
def built_report(report_inputs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The page of the fixture run and benchmark: <out>/index.html."""
    run, bench = report_inputs
    return build_report([run, bench], tmp_path_factory.mktemp("report") / "out", title="Fixture report <&>")
