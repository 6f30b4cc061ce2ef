"""Everything that talks to a Kubernetes API server: `audit`, `doctor` and `verify`.

This package is the only place that imports the `kubernetes` client, and only when one of
its commands runs (see `webhook.cli.COMMANDS`), so `serve` and `mutate` never load it.
"""
