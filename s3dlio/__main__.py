"""``python -m s3dlio``: the ``s3dlio`` command (see :mod:`s3dlio.cli`)."""

import sys

from .cli import main

sys.exit(main())
