"""The ``raymmi ingest images`` and ``raymmi generate images`` stage.

Its driver and Ray Data pipeline are in ``_driver``.
"""
