"""The HTML report of `bissl compare`: one self-contained file with tables, figures and the paired statistics.

It reads ``run_dir/results.json`` and draws its figures with matplotlib (Agg), embedding every image as a
base64 PNG, so the file can be archived or mailed alone and opened offline without JavaScript. The parts:
``results`` (reading and checking results.json), ``markup`` (HTML building blocks), ``figures``, the sections
(``outcome``, ``probes``, ``curves``, ``curvature``, ``run_details``) and ``page`` (assembling the document).
"""

from bissl.report.outcome import summary_sentence
from bissl.report.page import REPORT_FILE, render_report, write_report
from bissl.report.results import RESULTS_FILE, arm_label, load_results, metric_label, primary_metric_key

__all__ = [
    "REPORT_FILE",
    "RESULTS_FILE",
    "arm_label",
    "load_results",
    "metric_label",
    "primary_metric_key",
    "render_report",
    "summary_sentence",
    "write_report",
]
