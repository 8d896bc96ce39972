"""The ``plates`` ingest and generate stage, and the ``producer`` every stage uses: ``_driver``."""
