"""tessera: every efficient-attention mechanism behind one API."""

__version__ = "0.1.0"
