"""flowbook: variational inference with normalizing flows (Rezende & Mohamed, ICML 2015).

Modules:
    flows         the flow types (SPECS: planar, radial, NICE, ...): functions, one spec per type, modules (§4)
    kernels       the fast planar chain (hand-written backward; C kernels compiled on first use), via flows
    flowmath      input checks and planar formulas shared by flows and kernels
    gaussian      the diagonal-Gaussian log-density of q0
    energies      the 2-D test potentials U1-U4 of Table 1, their confinement and normalizers (§6.1)
    objectives    the annealed flow free energy (eq. 15) and the importance-sampled ln p(x)
    experiments2d batched 2-D fits for Table 1 / Figure 3: model, training, cli (python -m flowbook.experiments2d)
    data          MNIST, binarized MNIST, CIFAR-10 patches; the data root FLOWBOOK_DATA
    models        the DLGM with amortized flows (§4.2, §6.2), Bernoulli and logit-normal likelihoods
    train         resumable training, evaluation (bound, IS ln p(x)), results (python -m flowbook train)
    cifar         the CIFAR-10 patch setting of Table 3 (python -m flowbook.cifar)
    dynamics      infinitesimal flows: Langevin (Euler-Maruyama) and Hamiltonian (leapfrog, HVI) (§3.2)
    notebook      the setup every chapter runs first
    results       JSON results with provenance in data/results/
    store         the stored runs' manifest: verified local files, or cached downloads outside a clone
    instructor    strip solution cells for hand-outs (python -m flowbook.instructor)
"""

__version__ = "0.1.0"

from flowbook import iaf  # noqa: E402,F401 - registers the "iaf" flow type in flowbook.flows.SPECS
