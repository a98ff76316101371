"""`python -m service.cli ...`: the same as `extraction ...`."""

from service.cli import app

app()
