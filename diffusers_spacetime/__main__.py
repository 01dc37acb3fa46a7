"""`python -m diffusers_spacetime "a prompt" ...`: the same command as `spacetime-generate`."""

from .cli import main

raise SystemExit(main())
