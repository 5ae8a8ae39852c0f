"""Static attention patterns and their exact tile maps."""

from .base import Dense, Pattern
from .combine import Intersection, PerHead, Union
from .tilemap import EMPTY, FULL, PARTIAL, TileMap

__all__ = ["Pattern", "Dense", "Union", "Intersection", "PerHead", "TileMap", "EMPTY", "PARTIAL", "FULL"]
