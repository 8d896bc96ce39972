"""The HTML report of ``raymmi evaluate plates``."""

from __future__ import annotations

import base64
import html
import posixpath
from collections.abc import Mapping
from typing import Any

import pandas as pd

from raymmi.run._evaluate._tasks import HELDOUT, SCORE

# (summary column, better direction) in report order; the direction is printed in the report
SUMMARY_METRICS: tuple[tuple[str, str], ...] = (
    (
        "plate_profile",
        "wells whose per-plate medians the plate correlation uses (treated "
        "after per-plate negcon normalization, which zeroes the negcon medians)",
    ),
    ("plate_corr_within_batch", "lower = less batch structure"),
    ("plate_corr_between_batch", "closer to within-batch = less batch structure"),
    ("suggested_batch_ari", "lower = batches no longer recoverable from negcon medians"),
    ("outlier_plates", "lower"),
    ("batch_silhouette_negcon", "lower = batches mixed"),
    ("batch_asw", "higher = batches mixed (scib, 1 - |silhouette|)"),
    ("ilisi", "higher = batches mixed (scib-scaled median iLISI)"),
    ("batch_kmeans_ari", "lower = batches mixed"),
    ("graph_connectivity", "higher"),
    ("map_mean", "higher = replicates retrieved"),
    ("map_retrieved_fraction", "higher"),
    ("heldout_auroc_mean", "higher = treatment signal survives (over-normalization check)"),
    ("treated_outlier_fraction", "higher = more treated wells leave the negcon cloud"),
)


# --- report ------------------------------------------------------------------------------------


def _html_table(frame: pd.DataFrame, *, max_rows: int = 50) -> str:
    return frame.head(max_rows).to_html(
        index=False, float_format=lambda v: f"{v:.3g}", na_rep="–", border=0
    )


def _img(staging: str, png: str) -> str:
    """A figure inlined as a data URI: the page shows it anywhere, MLflow's artifact view too.

    MLflow renders an HTML artifact without a base address, so relative ``src`` names find
    nothing there; the PNG files stay beside the page as well.
    """
    with open(posixpath.join(staging, png), "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    name = html.escape(png)
    return f"<img src='data:image/png;base64,{data}' alt='{name}' title='{name}'>"


def _write_report(
    staging: str,
    summary: pd.DataFrame,
    per_set: Mapping[str, dict[str, Any]],
    files: Mapping[str, list[str]],
    *,
    batch_key: str,
    label_key: str,
) -> None:
    legend = pd.DataFrame(SUMMARY_METRICS, columns=["metric", "reading"])
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>raymmi evaluate plates"
        "</title><style>body{font-family:sans-serif;margin:2em;max-width:1400px}"
        "table{border-collapse:collapse;font-size:12px}td,th{padding:2px 8px;"
        "border-bottom:1px solid #ddd;text-align:right}img{max-width:100%}</style></head><body>",
        "<h1>raymmi evaluate plates</h1>",
        f"<p>batch key <code>{html.escape(batch_key)}</code>, label key "
        f"<code>{html.escape(label_key)}</code>. Summary also in <a href='summary.csv'>"
        "summary.csv</a>.</p>",
        "<h2>Summary</h2>",
        _html_table(summary.set_index("set").T.reset_index(names="metric"), max_rows=100),
        "<h3>How to read it</h3>",
        _html_table(legend),
    ]
    if "umap" in files:
        parts += ["<h2>UMAP of sampled wells</h2>", _img(staging, files["umap"][0])]
    for name, result in per_set.items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        for note in result["notes"]:
            parts.append(f"<p><b>Note:</b> {html.escape(note)}</p>")
        for png in files.get(name, []):
            parts.append(_img(staging, png))
        for table_name, table in result["tables"].items():
            if table_name == "plate_correlation":
                parts.append(
                    f"<p>Plate correlation matrix: <a href='{name}_{table_name}.csv'>"
                    f"{name}_{table_name}.csv</a></p>"
                )
                continue
            parts.append(f"<h3>{html.escape(table_name.replace('_', ' '))}</h3>")
            parts.append(_html_table(table))
            parts.append(f"<p><a href='{name}_{table_name}.csv'>{name}_{table_name}.csv</a></p>")
        parts.append(
            f"<p>Every well's scores: <a href='{name}_scores.parquet'>{name}_scores.parquet</a> "
            f"(columns <code>{SCORE}</code>, <code>{HELDOUT}</code>, pc1, pc2).</p>"
        )
    parts.append("</body></html>")
    with open(posixpath.join(staging, "index.html"), "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
