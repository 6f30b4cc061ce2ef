"""Everything that talks to a Kubernetes API server: `audit`, `doctor` and `verify`.

This package is the only place that imports the `kubernetes` client, and only inside the
functions that call the API; its commands (`webhook.commands.audit`, `.doctor`) load only
when they run (see `webhook.cli.COMMANDS`), so `serve` and `mutate` never load it.
"""
