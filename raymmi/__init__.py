"""raymmi: Cell Painting plates and multimodal single cells, distributed on Ray."""

__version__ = "0.1.0"
