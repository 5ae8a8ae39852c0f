"""Kernels written in Gluon (``triton.experimental.gluon``): Hopper code with explicit layouts,
shared-memory rings, mbarriers and asynchronous wgmma, for what Triton's own passes do not
build (issue #4: the tiled-neighborhood forward ``na_forward``, dq ``na_dq`` and dk/dv
``na_dkdv``, which ``kernels.triton.forward_route`` and ``backward_route`` pick where they were
measured faster)."""
