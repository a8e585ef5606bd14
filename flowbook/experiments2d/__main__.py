"""``python -m flowbook.experiments2d``: the command line of :mod:`flowbook.experiments2d.cli`."""
import sys

from flowbook.experiments2d.cli import main

sys.exit(main())
