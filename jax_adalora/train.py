"""``python -m jax_adalora.train``: the training command, :mod:`jax_adalora.cli.train`."""

import sys

from jax_adalora.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
