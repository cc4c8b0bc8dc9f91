"""``gate.json``, ``gate.md`` and ``gate.html``: the decision in one sentence, the probe scores
with intervals, the diagnosis heatmaps (HF layer × module vs the matched-norm null), the
candidate table (selection-half scores and seconds) and the attribution rows (each module type
alone, each layer quarter alone)."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np

from rotax.runtime.run_config import write_text_atomic


def sentence(result: dict) -> str:
    """The decision in one sentence."""
    chosen = (result.get("chosen") or {}).get("name", "no candidate")
    decision = result["decision"]
    if decision == "reset":
        return f"Decision: reset — apply '{chosen}': {result['reason']}."
    if decision == "rl":
        return f"Decision: rl — {result['reason']} ('{chosen}')."
    return f"Decision: none — {result['reason']}."


def _num(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}"


def _interval(pair) -> str:
    return "–" if not pair else f"[{_num(pair[0])}, {_num(pair[1])}]"


def tables(result: dict) -> dict[str, list[list[str]]]:
    """``{"scores", "candidates", "attribution", "diagnosis"}``: header row + rows of text."""
    out = {}
    unit = result["probe"].get("unit", "score")
    scores = [["probe", "model", f"mean ({unit})", "95% interval", "n"]]
    for label, key in (("probe", "probe"), ("ID probe", "id_probe")):
        block = result.get(key)
        if not block:
            continue
        for model in ("base", "tuned", "repaired"):
            scores.append([label, model, _num(block[model]["mean"], 4),
                           _interval(block[model]["interval"]), str(block[model]["n"])])
    out["scores"] = scores
    minus = " (−NLL)" if unit == "nll" else ""
    head = ["candidate", "group", "status", f"selection score{minus}", "recovered (selection)",
            "ID cost (selection)", "seconds"]
    rows = [head]
    attribution = [head]
    for row in result["candidates"]:
        cells = [row["candidate"]["name"], row["candidate"]["group"], row["status"],
                 _num(row["score"], 4), _num(row["recovered"]), _num(row["id_cost"], 4),
                 _num(row["seconds"], 1)]
        rows.append(cells)
        if row["candidate"]["group"] == "attribution":
            attribution.append(cells)
    out["candidates"], out["attribution"] = rows, attribution
    diag = [["layer", "module", "rotation", "null", "Σ drift", "null", "‖ΔW‖/‖W‖", "excess"]]
    for cell in result["diagnosis"]["ranked"]:
        diag.append(["–" if cell["layer"] is None else str(cell["layer"]), cell["module"],
                     _num(cell["rotation"]), _num(cell["null_rotation"]),
                     _num(cell["sigma_drift"], 4), _num(cell["null_sigma_drift"], 4),
                     _num(cell["rel_delta_norm"], 4), _num(cell["excess"], 2)])
    out["diagnosis"] = diag
    return out


def _markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def _summary_lines(result: dict) -> list[str]:
    diag = result["diagnosis"]
    moved = ("moved beyond the matched-norm null" if diag["beyond_null"] else
             "no cell beyond the null; the layers with the largest relative change")
    return [f"Recovered share on the report half: {_num(result['recovered'])} "
            f"(95% interval {_interval(result['recovered_interval'])}, target {result['target']}); "
            f"lost {_num(result['lost'], 4)} {_interval(result['lost_interval'])}; ID cost "
            f"{_num(result['id_cost'], 4)} {_interval(result['id_cost_interval'])} "
            f"(max {result['max_id_cost']}).",
            f"Diagnosis: layers {diag['layers'] or '–'}, modules {diag['modules'] or '–'} ({moved}).",
            f"Seconds: {_num(result['seconds'], 1)} in all, search {_num(result['search_seconds'], 1)}."]


def _finite(x):
    """``x`` with NaN / ±inf (an undefined share, an unbounded interval) as None: strict JSON."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


FIGURES = ("diagnosis_rotation.png", "diagnosis_sigma.png")


def write(out_dir, result: dict, diagnosis=None) -> None:
    """Writes gate.json, the heatmaps (when ``diagnosis`` is given), gate.md and gate.html."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "gate.json", json.dumps(_finite(result), indent=2, allow_nan=False))
    if diagnosis is not None:
        diagnosis.heatmaps(out)
    t = tables(result)
    sections = [("Probe scores (report half)", "scores"), ("Candidates (selection half)", "candidates"),
                ("Which modules matter (each module type alone, each layer quarter alone)", "attribution"),
                ("Diagnosis (ranked cells)", "diagnosis")]
    md = [f"# rotax gate: {result.get('tuned', 'tuned')} vs {result.get('base', 'base')}", "",
          f"**{sentence(result)}**", "", *_summary_lines(result), ""]
    md += [f"![{name}]({name})" for name in FIGURES if (out / name).exists()] + [""]
    for title, key in sections:
        md += [f"## {title}", "", _markdown_table(t[key]), ""]
    write_text_atomic(out / "gate.md", "\n".join(md))
    body = [f"<h1>rotax gate</h1><p><b>{html.escape(sentence(result))}</b></p>"]
    body += [f"<p>{html.escape(line)}</p>" for line in _summary_lines(result)]
    body += [f'<img src="{name}" style="max-width:48%">' for name in FIGURES if (out / name).exists()]
    for title, key in sections:
        body.append(f"<h2>{html.escape(title)}</h2>{_html_table(t[key])}")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>rotax gate</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:"
            "collapse}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}</style></head>"
            f"<body>{''.join(body)}</body></html>")
    write_text_atomic(out / "gate.html", page)
