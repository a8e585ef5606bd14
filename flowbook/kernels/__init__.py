"""Fast implementations of the planar chain (eq. 10–12), reached through one dispatch,
:func:`flowbook.flows.planar_chain` (``impl`` in ``"auto"``, ``"autograd"``, ``"fused"``, ``"native"``);
:func:`flowbook.flows.planar_impl` names the one that runs for a device and dtype.

* :mod:`flowbook.kernels.fused`: the chain with a hand-written backward (a PyTorch loop, any device);
* :mod:`flowbook.kernels.native`: its C kernels (``csrc/planar_chain.c``), compiled on first use on a CPU.

Both compute the map of :func:`flowbook.flows.planar` from the formulas of :mod:`flowbook.flowmath`;
nothing here imports :mod:`flowbook.flows`, so the dispatch there imports this package without a cycle.
"""
