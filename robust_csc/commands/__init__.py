"""The `robust-csc` verbs that live outside cli.py, one module per verb.

Each module registers its command on ``robust_csc.cli.app`` when imported;
cli.py imports them all at its end.
"""
