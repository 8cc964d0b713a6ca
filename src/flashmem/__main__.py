"""`python -m flashmem` (and `accelerate launch -m flashmem train`)."""
import sys

from .cli import main

sys.exit(main())
