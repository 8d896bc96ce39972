"""The ``raymmi ingest images`` and ``raymmi generate images`` stage.

Its driver (planning, checks, the illumination pass, the Ray Data pipeline, QC and the
manifest) is in ``_driver``; the per-block work its map tasks run is in ``_cells``.
"""
