"""`python -m latentbasis`: the same command as `latentbasis`."""
import sys

from .cli import main

sys.exit(main())
