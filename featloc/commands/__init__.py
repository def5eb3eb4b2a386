"""CLI subcommands; see featloc/cli.py."""
