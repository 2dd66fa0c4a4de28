import sys

from checkpoint_convert.cli import main

sys.exit(main())
