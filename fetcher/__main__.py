"""``python -m fetcher`` runs the ``fetch`` command."""

from fetcher.cli import main

main()
