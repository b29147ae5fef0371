"""``python -m fedsb.cli``: the same as the ``fedsb`` command."""

import sys

from fedsb.cli.main import main

sys.exit(main())
