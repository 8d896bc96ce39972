"""The ``raymmi normalize`` stage.

``_driver`` (the run), ``_tasks`` (its Ray tasks), ``_plate`` (one plate).
"""
