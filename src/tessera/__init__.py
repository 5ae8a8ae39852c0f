"""tessera: every efficient-attention mechanism behind one API.

``tessera.attention(q, k, v, ...)`` runs dense, causal, local and sparse attention (a
``tessera.patterns.Pattern``), softmax or sigmoid scores, biases (``tessera.bias``), softcap,
sinks, GQA and varlen, on the best backend for the call; ``tessera.api.explain`` tells why each
backend was or was not chosen. ``tessera.linear`` holds the linear and recurrent attention family,
``tessera.natten`` NATTEN-style N-D neighborhood attention, ``tessera.nn`` layers built on them.
"""

__version__ = "0.1.0"

from . import bias, kernels, linear, natten, nn, patterns
from .api import attention, explain
from .merge import merge_attentions

__all__ = ["attention", "explain", "merge_attentions", "bias", "patterns", "kernels", "linear", "natten", "nn", "__version__"]
