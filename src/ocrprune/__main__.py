"""`python -m ocrprune` runs the command line."""

from .cli import main

main()
