"""Attention layers built on tessera's ops, as ``torch.nn.Module``s with recurrent decode.

``BasedAttention``: BASED's token mixer (Taylor linear attention beside sliding-window softmax attention).
"""

from .based import BasedAttention, BasedCache

__all__ = ["BasedAttention", "BasedCache"]
