"""``python -m derivcheck`` runs the command line."""

from derivcheck.cli import entry

entry()
