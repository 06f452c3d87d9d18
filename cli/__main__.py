"""`python -m cli`: the `attribution` command line."""

from cli.main import app

app()
