"""``raymmi export``: one tracked run around the streaming exporters."""

from __future__ import annotations

import time

from raymmi.config import ExportConfig, TrackingConfig, to_dict
from raymmi.io import claiming, export_cells, export_format, export_plates, open_shard_set
from raymmi.track import tracked_run


@claiming(
    lambda config, **_: {
        "uri": config.out,
        "inputs": [config.source],
        "overwrite": config.overwrite,
        "kind": "file",
        "marker": None,
    }
)
def export(config: ExportConfig, *, tracking: TrackingConfig | None = None) -> int:
    """Export a shard set to a wide table (plates) or ``.h5ad`` (cells); return rows written."""
    started = time.perf_counter()
    shard_set = open_shard_set(config.source)
    export_format(shard_set, config.out)
    with tracked_run("export", config=to_dict(config), tracking=tracking) as run:
        run.log_shard_set(config.source, shard_set.manifest.to_dict(), context="input")
        write = export_plates if shard_set.kind == "plates" else export_cells
        rows = write(shard_set, config.out, overwrite=config.overwrite)
        run.set_tags({"raymmi.output": config.out})
        run.log_metrics({"rows": rows, "seconds": time.perf_counter() - started})
    return rows
