"""The ``raymmi preprocess cells`` stage: its driver and Ray tasks in ``_driver``."""
