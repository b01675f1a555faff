"""python -m quattro_cli: the `quattro` command."""
import sys

from quattro_cli import main

sys.exit(main())
