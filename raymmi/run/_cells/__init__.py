"""The ``cells`` ingest and generate stage: its driver and Ray tasks in ``_driver``."""
