"""flowbook: variational inference with normalizing flows (Rezende & Mohamed, ICML 2015).

Modules:
    flows       planar, radial and NICE (additive coupling) flows, module and amortized forms
    energies    the 2-D test potentials U1-U4 of the paper's Table 1, and their normalizers
    objectives  the annealed flow free energy (the paper's eq. 15) and importance-sampled ln p(x)
    notebook    the setup every chapter runs first
    results     JSON results with provenance in data/results/
"""

__version__ = "0.1.0"
