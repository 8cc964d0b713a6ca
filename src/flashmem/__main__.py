"""`python -m flashmem ...` (and `accelerate launch -m flashmem train ...`)."""
from .cli import main

raise SystemExit(main())
