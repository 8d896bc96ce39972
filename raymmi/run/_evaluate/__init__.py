"""The ``raymmi evaluate plates`` stage.

``_driver`` (the run), ``_checks`` (input checks), ``_one`` (one shard set), ``_tasks``
(its Ray tasks), ``_report`` (the HTML report).
"""
