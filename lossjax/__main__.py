import sys

from lossjax.cli import main

sys.exit(main())
