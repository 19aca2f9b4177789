import sys

from lpo_bench.cli import main

sys.exit(main())
