"""The Colab notebooks, executed headless with nbclient against the session's smoke study
(``smoke_run`` in tests/conftest.py, shared with tests/study/test_study.py): their numbers must be the
ones the study itself computed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from rotax.study.pipeline import STAGES

pytestmark = pytest.mark.slow
NOTEBOOKS = Path(__file__).resolve().parents[2] / "colab"


def run_notebook(name: str, parameters: dict, extra_cells=(), timeout: int = 900):
    """Executes ``colab/<name>`` with ``parameters`` injected after the cell tagged
    ``parameters`` (as papermill does) and ``extra_cells`` appended; returns the notebook."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    index = next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in parameters.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, injected)
    nb.cells += [nbformat.v4.new_code_cell(source) for source in extra_cells]
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def outputs_of(cell, mime: str) -> list:
    return [o["data"][mime] for o in cell.get("outputs", []) if mime in o.get("data", {})]


def printed_json(nb, marker: str = "RESULT ") -> dict:
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o["output_type"] == "stream")
    return json.loads(text[text.index(marker) + len(marker):])


def cell_with(nb, snippet: str):
    return next(c for c in nb.cells if c.cell_type == "code" and snippet in c.source)


def _stage(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / "stages" / f"{name}.json").read_text())


def _files(run_dir: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in sorted((run_dir / "stages").glob("*.json"))}


@pytest.mark.parametrize("name", ["toy_study.ipynb", "explore_spectra.ipynb"])
def test_notebooks_are_stored_clean_with_setup_and_parameters(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert "google.colab" in code[0].source and "pip" in code[0].source
    assert code[1].metadata.get("tags") == ["parameters"]


def test_toy_study_notebook_rerenders_a_finished_smoke_run(smoke_run):
    run_dir = smoke_run[0]
    stage_files, config = _files(run_dir), json.loads((run_dir / "config.json").read_text())
    nb = run_notebook("toy_study.ipynb", {"run_dir": str(run_dir), "overrides": ["study.progress=False"]},
                      ["import json\nprint('RESULT ' + json.dumps(sorted(outputs)))"])
    assert sorted(printed_json(nb)) == sorted(STAGES)
    # every stage was already finished: nothing re-ran, and the notebook's config (toy.py +
    # smoke preset) is byte for byte the one `rotax study --config.study.preset=smoke` wrote
    assert _files(run_dir) == stage_files
    assert json.loads((run_dir / "config.json").read_text()) == config
    # the report it shows is the study's: the headline table of report.md, then every figure
    from rotax.study.report import table_rows_markdown

    summary = json.loads((run_dir / "summary.json").read_text())
    report = cell_with(nb, "render_markdown")
    table = "\n".join(table_rows_markdown(summary["table"]))
    assert table in (run_dir / "report.md").read_text()
    assert any(table in text for text in outputs_of(report, "text/markdown"))
    assert len(outputs_of(report, "image/png")) == len(summary["figures"]) >= 1


EXPLORE_PROBE = """
import json
panel = controls.controls
panel["analyze"].click()      # the widgets re-run the analysis of the parameters' pair
panel["rank"].value = 0.0     # ... and a UV merge with k = 0
panel["apply"].click()
print("RESULT " + json.dumps({"names": ex.names, "pair": [ex.reference, ex.target],
                               "comparison": comparison, "spectra": spectra.rows,
                               "panel_spectra": controls.state["result"].rows,
                               "panel_rows": controls.state["rows"]}))
"""


def test_explore_notebook_reproduces_the_study(smoke_run, tmp_path):
    """Run directory mode with the default pair (the study's reset reference and the SFT end)
    and a UV merge of the top 20% on every layer: the spectra equal the study's analysis, the
    before/after table equals the study's reset grid, and the widgets' k = 0 reset equals the
    target."""
    from rotax.notebook.explore import table_markdown

    run_dir = smoke_run[0]
    stage_files = _files(run_dir)
    nb = run_notebook("explore_spectra.ipynb", {"run_dir": str(run_dir), "out_dir": str(tmp_path)},
                      [EXPLORE_PROBE])
    got = printed_json(nb)
    sft, config = _stage(run_dir, "sft"), json.loads((run_dir / "config.json").read_text())
    on_base = config["study"]["reset_reference"] == "base"
    ref_name = "base" if on_base else f"sft_{sft['peak_step']}"
    end = f"sft_{sft['end_step']}"
    labels = [r["label"] for r in _stage(run_dir, "ppo")["runs"] if not r.get("sft_seed")]
    assert got["names"] == ["base", *(f"sft_{s}" for s in sft["checkpoints"]), *(f"ppo_{x}" for x in labels)]
    assert got["pair"] == [ref_name, end]

    # spectra: the study's own analysis of the SFT end against the reference (same k, null, key)
    spectra = got["spectra"]
    assert spectra and all(r["target"] == end for r in spectra)
    if ref_name != end:
        with open(run_dir / "analysis" / ("vs_base" if on_base else "vs_peak") / "metrics.csv") as f:
            study_rows = [r for r in csv.DictReader(f) if r["target"] == end]
        assert [r["tensor"] for r in spectra] == [r["tensor"] for r in study_rows]
        for mine, theirs in zip(spectra, study_rows):
            for column, value in mine.items():
                if isinstance(value, float):
                    assert value == float(theirs[column]) or value != value, (mine["tensor"], column)
    else:  # the pair is one model: nothing moved
        assert all(r["sigma_drift"] == 0.0 for r in spectra)
    assert got["panel_spectra"] == spectra

    # before/after: the study's reset grid on the same hands (reset_hands x eval_seeds)
    grid = {r["name"]: r for r in _stage(run_dir, "resets")["rows"] if not r.get("sft_seed")}
    reference, target, merged = got["comparison"]
    assert [reference["name"], target["name"], merged["name"]] == [
        f"reference: {ref_name}", f"target: {end}", "UV merge top 20% (layers all)"]
    for row, study_row in ((target, grid["SFT end (no reset)"]), (merged, grid["UV merge top 20%"])):
        assert (row["id"], row["ood"]) == (study_row["id"], study_row["ood"]), row["name"]
    n = config["study"]["reset_hands"] * len(config["study"]["eval_seeds"])
    assert reference["id"]["n"] == reference["ood"]["n"] == n
    shown = outputs_of(cell_with(nb, "ex.compare("), "text/markdown")
    assert shown == [table_markdown(got["comparison"])]
    assert len(outputs_of(cell_with(nb, "ex.compare("), "image/png")) == 1

    # the widgets: a k = 0 UV merge is the target itself, on the same hands
    panel = got["panel_rows"]
    assert panel[2]["name"] == "UV merge top 0% (layers all)"
    assert (panel[2]["id"], panel[2]["ood"]) == (target["id"], target["ood"])
    assert [(r["id"], r["ood"]) for r in panel[:2]] == [(reference["id"], reference["ood"]),
                                                        (target["id"], target["ood"])]
    figures = outputs_of(cell_with(nb, "ex.figures("), "image/png")
    assert len(figures) == len(list((tmp_path / end).glob("*.png"))) >= 5
    assert _files(run_dir) == stage_files  # the run is only read


def test_explore_hf_pair_reproduces_the_ppo_evaluation(smoke_run, tmp_path):
    """HF-directory mode (what the notebook opens when ``run_dir`` is empty): the study's base
    and a PPO run's exported policy, with the smoke preset's evaluation settings, give the
    PPO run's final ID/OOD numbers."""
    from rotax.notebook import explore

    run_dir = smoke_run[0]
    run = [r for r in _stage(run_dir, "ppo")["runs"] if not r.get("sft_seed")][-1]
    ex = explore.open_models("", str(run_dir / "base"), str(run_dir / "ppo" / run["label"] / "final_hf"),
                             overrides=["study.preset=smoke"], out_dir=tmp_path)
    assert ex.names == ["reference", "target"] and (ex.reference, ex.target) == ("reference", "target")
    config = json.loads((run_dir / "config.json").read_text())
    for key in ("attempts", "max_new_tokens", "reset_hands", "eval_batch_size", "deck"):
        assert ex.study[key] == config["study"][key], key
    assert list(ex.study.eval_seeds) == config["study"]["eval_seeds"]
    acc = ex.evaluate(ex.params("target"))
    assert (acc["id"], acc["ood"]) == (run["final"]["id"], run["final"]["ood"])
