import sys

from rocore.cli import main

sys.exit(main())
