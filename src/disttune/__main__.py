"""``python -m disttune`` is the ``disttune`` command."""

import sys

from disttune.cli import main

sys.exit(main())
