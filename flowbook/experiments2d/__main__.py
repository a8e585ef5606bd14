"""``python -m flowbook.experiments2d``: the command line of :mod:`flowbook.experiments2d.cli`."""
from flowbook.experiments2d.cli import main

main()
