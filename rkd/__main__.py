"""`python -m rkd` is the `rkd` command."""
from .cli import main

main()
