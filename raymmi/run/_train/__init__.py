"""The ``raymmi train`` stage.

``_driver`` (the run), ``_plan`` (planning), ``_loop`` (the training loop), ``_embed``
(the embedding pass, its scores and plots).
"""
