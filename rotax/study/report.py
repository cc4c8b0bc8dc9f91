"""The study report: ``report.md`` and ``report.html`` from the study's ``summary.json``.

The summary is the single source of the numbers; the report only formats them, so a test can
check that every number in the table equals the one in the metrics files.

Summary schema (all accuracies are fractions in [0, 1]; ``ci`` is a 95% Wilson interval):
``{"name", "config", "stage_seconds": {stage: s}, "table": [row], "claims": [claim],
   "figures": [{"path", "caption"}], "notes": [str]}`` where a row is
``{"name", "kind", "id": {"mean", "ci"}, "ood": {"mean", "ci"}, "recovered": float | None,
   "seconds": float | None, "detail": str}`` and a claim is
``{"claim", "verdict": "supported" | "not supported" | "mixed" | "not tested" | "not testable"
(the effect to explain is within the evaluation noise) | "reported", "evidence"}``.
"""

from __future__ import annotations

import html
import json
from pathlib import Path


def percent(x, suffix: str = "") -> str:
    """A share as a percentage with one decimal (``"—"`` for None)."""
    return "—" if x is None else f"{100 * x:.1f}{suffix}"


def _acc(cell) -> str:
    if not cell:
        return "—"
    lo, hi = cell.get("ci", (None, None))
    band = f" [{percent(lo)}, {percent(hi)}]" if lo is not None else ""
    return f"{percent(cell['mean'])}{band}"


def recovered_fraction(base_ood: float | None, peak_ood: float, end_ood: float, value: float) -> float | None:
    """Share of the OOD accuracy lost between the SFT peak and the SFT end that ``value``
    recovers: ``(value - end) / (peak - end)``; None when nothing was lost."""
    lost = peak_ood - end_ood
    if lost <= 1e-12:
        return None
    return (value - end_ood) / lost


def _face(cell) -> str:
    return percent((cell or {}).get("face_as_id"))


def table_rows_markdown(rows: list[dict]) -> list[str]:
    lines = ["| model | ID acc % [95% CI] | OOD acc % [95% CI] | OOD face→10 % | % of lost OOD recovered | "
             "seconds | detail |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        rec = "—" if r.get("recovered") is None else f"{100 * r['recovered']:.0f}"
        sec = "—" if r.get("seconds") is None else f"{r['seconds']:.1f}"
        lines.append(f"| {r['name']} | {_acc(r.get('id'))} | {_acc(r.get('ood'))} | {_face(r.get('ood'))} | "
                     f"{rec} | {sec} | {r.get('detail', '')} |")
    return lines


def curve_markdown(curves: list[dict]) -> list[str]:
    """The SFT curve of each seed: ID, OOD and the face-as-10 share per checkpoint."""
    out = []
    for c in curves:
        out += [f"SFT seed {c['sft_seed']}:", "", "| step | ID % | OOD % | OOD face→10 % |", "|---|---|---|---|"]
        out += [f"| {p['step']} | {percent(p['id'])} | {percent(p['ood'])} | {percent(p.get('face_as_id'))} |"
                for p in c["points"]]
        out.append("")
    return out


def render_markdown(summary: dict) -> str:
    out = [f"# rotax study: {summary.get('name', '')}", ""]
    for note in summary.get("notes", []):
        out += [note, ""]
    out += ["## Headline table", "", *table_rows_markdown(summary.get("table", [])), ""]
    out += ["Accuracy = share of hands solved within the attempt budget; intervals are 95% Wilson "
            "intervals over hands (pooled over evaluation seeds), or, for means over SFT seeds, include "
            "the seed-to-seed spread. OOD face→10: share of OOD hands whose scratchpad reads a face "
            "card under the ID rule (as 10) — the papers' failure.", ""]
    out += ["## The papers' claims, checked on this run", ""]
    for c in summary.get("claims", []):
        out += [f"**{c['claim']}** — *{c['verdict']}*. {c['evidence']}", ""]
    if summary.get("sft_curves"):
        out += ["## SFT curves (curve hands)", "", *curve_markdown(summary["sft_curves"])]
    for seed_table in summary.get("seed_tables", []):
        out += [f"## Appendix: SFT seed {seed_table['sft_seed']}", "", *table_rows_markdown(seed_table["table"]), ""]
    out += ["## Figures", ""]
    for fig in summary.get("figures", []):
        out += [f"![{fig['caption']}]({fig['path']})", "", f"*{fig['caption']}*", ""]
    stages = summary.get("stage_seconds", {})
    if stages:
        out += ["## Wall time per stage", "", "| stage | seconds |", "|---|---|"]
        out += [f"| {k} | {v:.0f} |" for k, v in stages.items()] + [""]
    return "\n".join(out)


def render_html(summary: dict) -> str:
    esc = html.escape
    rows = []
    for r in summary.get("table", []):
        rec = "—" if r.get("recovered") is None else f"{100 * r['recovered']:.0f}"
        sec = "—" if r.get("seconds") is None else f"{r['seconds']:.1f}"
        rows.append(f"<tr><td>{esc(r['name'])}</td><td>{esc(_acc(r.get('id')))}</td>"
                    f"<td>{esc(_acc(r.get('ood')))}</td><td>{rec}</td><td>{sec}</td>"
                    f"<td>{esc(r.get('detail', ''))}</td></tr>")
    claims = "".join(f"<p><b>{esc(c['claim'])}</b> — <i>{esc(c['verdict'])}</i>. {esc(c['evidence'])}</p>"
                     for c in summary.get("claims", []))
    figs = "".join(f"<figure><img src='{esc(f['path'])}' style='max-width:900px'>"
                   f"<figcaption>{esc(f['caption'])}</figcaption></figure>"
                   for f in summary.get("figures", []))
    notes = "".join(f"<p>{esc(n)}</p>" for n in summary.get("notes", []))
    stages = "".join(f"<tr><td>{esc(k)}</td><td>{v:.0f}</td></tr>"
                     for k, v in summary.get("stage_seconds", {}).items())
    return f"""<!doctype html><html><head><meta charset='utf-8'>
<title>rotax study: {esc(summary.get('name', ''))}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px}}</style></head><body>
<h1>rotax study: {esc(summary.get('name', ''))}</h1>{notes}
<h2>Headline table</h2><table><tr><th>model</th><th>ID acc % [95% CI]</th><th>OOD acc % [95% CI]</th>
<th>% of lost OOD recovered</th><th>seconds</th><th>detail</th></tr>{''.join(rows)}</table>
<h2>The papers' claims, checked on this run</h2>{claims}
<h2>Figures</h2>{figs}
<h2>Wall time per stage</h2><table><tr><th>stage</th><th>seconds</th></tr>{stages}</table>
</body></html>"""


def write_report(summary: dict, run_dir: str | Path) -> tuple[Path, Path]:
    """Writes ``summary.json``, ``report.md`` and ``report.html`` into ``run_dir``."""
    run_dir = Path(run_dir)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    md, page = run_dir / "report.md", run_dir / "report.html"
    md.write_text(render_markdown(summary))
    page.write_text(render_html(summary))
    return md, page
