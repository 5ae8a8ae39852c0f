"""Kernels written in Gluon (``triton.experimental.gluon``): Hopper code with explicit layouts,
shared-memory rings, mbarriers and asynchronous wgmma, for what Triton's own passes do not
build (kernel issue #4: the tiled-neighborhood forward, which ``kernels.triton.forward_route``
picks where it was measured faster)."""
