"""``python -m bissl`` (and ``torchrun -m bissl``) runs the command-line tool."""

import sys

try:
    from bissl.cli import main
except KeyboardInterrupt:  # Ctrl-C while the tool is still being imported
    print("bissl: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
