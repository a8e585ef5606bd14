"""flowbook: variational inference with normalizing flows (Rezende & Mohamed, ICML 2015).

Modules:
    flowmath      input checks and planar formulas shared by flows and kernels
    gaussian      the diagonal-Gaussian reparameterization z0 = mu + sigma*eps and log-density of q0
    kernels       the fast planar chain (hand-written backward; C kernels compiled on first use), via flows
    flows         the flow types (SPECS: planar, radial, NICE, ...; register adds one): functions, one spec per
                  type with its options (options_of), modules (§4)
    householder   the Householder flow (Tomczak & Welling, 2016): volume-preserving reflections
    sylvester     Sylvester flows (van den Berg et al., 2018): z + QR h(R̃Qᵀz + b), Householder or triangular
    objectives    the annealed flow free energy (eq. 15) and the importance-sampled ln p(x)
    energies      the 2-D test potentials U1-U4 of Table 1, their confinement and normalizers (§6.1)
    dynamics      infinitesimal flows: Langevin (Euler-Maruyama) and Hamiltonian (leapfrog, HVI) (§3.2)
    data          MNIST, binarized MNIST, CIFAR-10 patches; the data root FLOWBOOK_DATA
    models        the DLGM with amortized flows (§4.2, §6.2), Bernoulli and logit-normal likelihoods
    runid         a run's identity: RunConfig, config_digest, the names of results and weights
    loop          the one resumable loop (step, checkpoint cadence, deadline) of the DLGMs and the 2-D fits
    checkpoints   checkpoint names, atomic saves, resumption and refused checkpoints
    evaluation    the paper's evaluation (S importance samples) of a trained model, resumable
    trainer       the dataset-free resumable training (Algorithm 1) and evaluation of DLGM rows
    train         binarized MNIST's experiment of Table 2: config, presets, stages (python -m flowbook train)
    cifar         CIFAR-10's experiment of Table 3, the patch setting
    experiments2d batched 2-D fits for Table 1 / Figure 3: model, training, cli (python -m flowbook.experiments2d)
    gaps          the approximation and amortization gaps of a trained row
    results       JSON results with provenance in data/results/
    store         the stored runs' manifest: verified local files, or cached downloads outside a clone
    pretrained    the stored rows' float16 weights, checked against their results
    runner        what every experiment's command goes through: device, checkpoints, results, weights
    options       the command-line options the commands share, and their checks (--flow-option, ...)
    __main__      python -m flowbook train / eval, and the commands below
    cifarcli      python -m flowbook.cifar train
    evalcli       python -m flowbook evaluate-weights
    datacli       python -m flowbook data fetch
    storecli      python -m flowbook store verify / fetch / manifest
    notebook      the setup every chapter runs first
    instructor    strip solution cells for hand-outs (python -m flowbook.instructor)
"""

__version__ = "0.1.0"

# flow modules that register their types in flowbook.flows.SPECS on import: one line per module
from flowbook import householder  # noqa: E402,F401  (householder)
from flowbook import sylvester  # noqa: E402,F401  (sylvester-h, sylvester-t)
from flowbook import iaf  # noqa: E402,F401  (iaf)
