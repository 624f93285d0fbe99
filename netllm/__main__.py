import sys

from netllm.cli import main

sys.exit(main())
