"""Every report of bissl, each drawn from a results.json alone.

``bissl compare``'s report.html: one self-contained file with tables, figures and the paired statistics. It
reads ``run_dir/results.json`` and draws its figures with matplotlib (Agg), embedding every image as a base64
PNG, so the file can be archived or mailed alone and opened offline without JavaScript. The parts: ``schema``
(the blocks of results.json, reading and checking it, writing it), ``results`` (the accessors the sections
read it through), ``markup`` (HTML building blocks), ``figures``, the sections (``outcome``, ``probes``,
``curves``, ``curvature``, ``run_details``) and ``page`` (assembling the document).

``bissl study``'s report.html (``study``) and the evidence page docs/evidence.md (``evidence``) from a
study's results.json, in the same schema module.
"""

from bissl.report.evidence import write_evidence
from bissl.report.outcome import format_compare_table, summary_sentence
from bissl.report.page import REPORT_FILE, render_report, write_report
from bissl.report.results import arm_label, metric_label, primary_metric_key
from bissl.report.schema import (
    RESULTS_FILE,
    load_compare_results,
    load_study_results,
    write_compare_results,
    write_study_results,
)
from bissl.report.study import write_study_report

__all__ = [
    "REPORT_FILE",
    "RESULTS_FILE",
    "arm_label",
    "format_compare_table",
    "load_compare_results",
    "load_study_results",
    "metric_label",
    "primary_metric_key",
    "render_report",
    "summary_sentence",
    "write_compare_results",
    "write_evidence",
    "write_report",
    "write_study_report",
    "write_study_results",
]
