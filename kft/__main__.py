"""`python -m kft` is the `kft` command."""

from kft.cli import entry_point

entry_point()
