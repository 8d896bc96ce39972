"""The ``raymmi export`` stage: its driver in ``_driver``."""
