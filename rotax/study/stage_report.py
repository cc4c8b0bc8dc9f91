"""The report stage of `rotax study`."""

from __future__ import annotations

from rotax.study.context import StudyContext
from rotax.study.report import write_report
from rotax.study.summary import build_summary


def run(ctx: StudyContext, outputs: dict) -> dict:
    """summary.json, the figures, report.md and report.html."""
    summary = build_summary(ctx, outputs)
    md, page = write_report(summary, ctx.run_dir)
    return {"report_md": str(md), "report_html": str(page)}
