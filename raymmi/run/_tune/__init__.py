"""The ``raymmi tune`` stage.

``_driver`` (the search), ``_plan``, ``_trial``, ``_inprocess``, ``_pack``, ``_callbacks``,
``_mlflow``, ``_tables``.
"""
