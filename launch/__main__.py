"""`python -m launch ...` is `harness-launch ...`."""

import sys

from launch.cli import main

sys.exit(main())
