import sys

from jaxfcn.cli import main

sys.exit(main())
