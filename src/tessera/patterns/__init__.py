"""Static attention patterns and their exact tile maps.

A pattern says which keys each query may see (``mask``), and yields its exact ``TileMap`` in
O(listed tiles) (``tile_map``). Build one from the classes below, combine with ``|`` / ``&`` /
``PerHead``, or ``parse`` a spec string such as ``"window:256+sinks:4"``; ``to_flex`` exports any
pattern to FlexAttention, ``save_picture`` draws it.
"""

from .base import Dense, Pattern
from .blocksparse import BlockSparse
from .combine import Intersection, PerHead, Union
from .custom import FromFlex, FromMask
from .flex import to_flex
from .layout import GridLayout, GridPattern, Permuted, choose_tile_shape
from .local import Blocked, Causal, Window
from .neighborhood import Neighborhood, predicted_speedup
from .offsets import OffsetSet
from .render import save_picture
from .sinks import Sinks
from .sparse import Dilated, Power, Strided
from .spec import parse, to_spec
from .tilemap import EMPTY, FULL, PARTIAL, TileMap
from .vision import CSWin, CrissCross, Halo, MaxViTBlock, MaxViTGrid, Radial, Swin

__all__ = ["Pattern", "Dense", "Causal", "Window", "Blocked", "Sinks", "Dilated", "Strided", "Power",
           "BlockSparse", "FromMask", "FromFlex", "Union", "Intersection", "PerHead", "OffsetSet", "TileMap",
           "EMPTY", "PARTIAL", "FULL", "parse", "to_spec", "to_flex", "save_picture",
           "Neighborhood", "GridPattern", "GridLayout", "Permuted", "choose_tile_shape",
           "predicted_speedup", "Swin", "MaxViTBlock", "MaxViTGrid", "Halo", "CSWin", "CrissCross",
           "Radial"]
