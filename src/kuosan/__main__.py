import sys

from kuosan.cli import main

sys.exit(main())
