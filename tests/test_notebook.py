"""The notebook under docs/ runs in a Jupyter kernel: no Flower log lines, re-runnable."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_quickstart_notebook_runs_twice_without_flower_log(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbconvert")
    pytest.importorskip("ipykernel")
    notebook = tmp_path / "quickstart.ipynb"
    shutil.copy(ROOT / "docs" / "notebooks" / "quickstart.ipynb", notebook)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "jupyter",
            "nbconvert",
            "--to",
            "notebook",
            "--execute",
            "--ExecutePreprocessor.timeout=300",
            "--output",
            "executed.ipynb",
            str(notebook),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    runs = [c for c in executed.cells if c.cell_type == "code" and "fedsim.run(" in c.source]
    assert len(runs) == 2
    for cell in runs:
        text = "".join(
            o.get("text", "") + "".join(str(v) for v in o.get("data", {}).values())
            for o in cell.outputs
        )
        assert "final accuracy" in text
        # Flower's console format is "INFO :  ..." / "WARNING :  ..." (flwr.supercore.logger).
        for level in ("INFO", "WARNING", "DEBUG"):
            assert f"{level} " not in text and f"{level}\x1b" not in text, text
        assert not any(o.output_type == "error" for o in cell.outputs)
        assert any(o.output_type == "display_data" for o in cell.outputs)  # the progress bar
        # A widget, not the warning to install ipywidgets (the notebook extra has it).
        assert "IProgress not found" not in text, text
    assert (tmp_path / "runs" / "notebook-quickstart" / "summary.json").is_file()
