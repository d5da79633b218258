"""``python -m jax_adalora.predict``: labelling or generating with a trained run, :mod:`jax_adalora.cli.predict`."""

import sys

from jax_adalora.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
