"""Reports from a results store: tables (CSV, Markdown, LaTeX), plots (PNG, PDF), one HTML page and its Markdown twin.

    from robust_csc.reports import write_report
    path = write_report("results.sqlite", "report", baseline="resnet18", checkpoints=["model.safetensors"])

Modules: cells (series and cell kinds), tables (DataFrames), formats (CSV /
Markdown / LaTeX), plots and model_plots (matplotlib Figures), page (HTML and
Markdown), build (write_report, build_report).
"""

from robust_csc.reports.build import Report, build_report, write_report

__all__ = ["Report", "build_report", "write_report"]
