import sys

from fishersft.cli import main

sys.exit(main())
