"""``python -m derivcheck`` runs the command line."""

from .cli import entry

entry()
