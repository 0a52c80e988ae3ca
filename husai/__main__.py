"""`python -m husai ...` is the same as the `husai` command."""

import sys

from husai.cli import main

sys.exit(main())
