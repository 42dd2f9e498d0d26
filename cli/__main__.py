"""`python -m cli`: the `inf590k` command."""

from cli import main

main()
