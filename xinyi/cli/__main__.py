"""`python -m xinyi.cli ...`, as the installed `xinyi` command."""

import sys

from xinyi.cli.main import main

sys.exit(main())
