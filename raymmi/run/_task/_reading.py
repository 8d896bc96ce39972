"""Reading the cells of the named batches, one Ray task per file."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import ray
import scipy.sparse as sp

from raymmi.io import resolve
from raymmi.run._runtime import gather
from raymmi.run._task._config import Matrix
from raymmi.run._task._planning import _in_batches, _Plan
from raymmi.schema import (
    CELL_ID,
    Modality,
    indices_column,
    list_to_dense,
    lists_to_sparse,
    values_column,
)


@dataclasses.dataclass
class _Cells:
    """Gathered rows, in file order: obs, values per modality, the file of each row."""

    obs: pd.DataFrame
    values: dict[str, Matrix]
    part: np.ndarray

    def rows(self, batch_key: str, batches: Sequence[str]) -> np.ndarray:
        return self.obs[batch_key].astype(str).isin(list(batches)).to_numpy()


@ray.remote(num_cpus=1)
def _read_cells_task(
    path: str,
    batch_key: str,
    batches: tuple[str, ...],
    obs_columns: tuple[str, ...],
    modalities: tuple[Modality, ...],
) -> tuple[pd.DataFrame, dict[str, Matrix]]:
    fs, local = resolve(path)
    value_columns = [c for m in modalities for c in m.columns()]
    names = list(dict.fromkeys([CELL_ID, batch_key, *obs_columns, *value_columns]))
    table = pq.read_table(local, columns=names, filesystem=fs)
    table = table.filter(_in_batches(table, batch_key, batches))
    obs = table.select([CELL_ID, batch_key, *obs_columns]).to_pandas()
    obs[CELL_ID] = obs[CELL_ID].astype(str)
    obs[batch_key] = obs[batch_key].astype(str)
    values: dict[str, Matrix] = {}
    for m in modalities:
        if m.encoding == "sparse":
            values[m.name] = lists_to_sparse(
                table.column(indices_column(m.name)),
                table.column(values_column(m.name)),
                n_features=len(m.features),
            )
        elif table.num_rows:
            values[m.name] = np.array(list_to_dense(table.column(m.name)), dtype=np.float32)
        else:
            values[m.name] = np.zeros((0, len(m.features)), dtype=np.float32)
    return obs, values


def _read_cells(plan: _Plan) -> _Cells:
    manifest = plan.shard.manifest
    mods = tuple(manifest.modality(name) for name in plan.reads)
    config = plan.config
    refs = [
        _read_cells_task.remote(path, config.batch_key, plan.read_batches, plan.obs, mods)
        for path in plan.shard.file_uris()
    ]
    parts = gather(refs, desc=f"task {config.task}: read cells", unit="file")
    obs = pd.concat([o for o, _ in parts], ignore_index=True)
    values: dict[str, Matrix] = {}
    for m in mods:
        blocks = [v[m.name] for _, v in parts]
        if m.encoding == "sparse":
            values[m.name] = sp.vstack(blocks, format="csr")
        else:
            values[m.name] = np.vstack(blocks)
    part = np.repeat(np.arange(len(parts)), [len(o) for o, _ in parts])
    return _Cells(obs=obs, values=values, part=part)
