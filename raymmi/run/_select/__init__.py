"""The ``raymmi select`` stage: its driver and Ray tasks in ``_driver``."""
