"""``python -m cli`` runs the psiq command (used by tests that start two processes)."""

from .main import main

main()
