import sys

from tetrapipe.cli import main

sys.exit(main())
