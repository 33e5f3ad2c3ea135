import sys

from dissectjax.cli import main

sys.exit(main())
