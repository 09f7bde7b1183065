"""``python -m spikeseg``: the same CLI as the ``spikeseg`` command."""

import sys

from spikeseg.cli import main

if __name__ == "__main__":  # importing this module (documentation tools do) runs nothing
    sys.exit(main())
