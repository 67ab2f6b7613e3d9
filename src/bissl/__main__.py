"""``python -m bissl`` (and ``torchrun -m bissl``) runs the command-line tool."""

import sys

from bissl.cli import main

sys.exit(main())
