"""`python -m robust_csc.cli` (and `torchrun -m robust_csc.cli train ...`): the same as the robust-csc script."""

from robust_csc.cli import main

main()
