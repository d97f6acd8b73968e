"""`python -m ocrprune` runs the command line."""

from ocrprune.cli import main

main()
