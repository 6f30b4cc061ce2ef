"""The command layer: one module per subcommand, each exporting `<name>_command`.

Commands parse options, call the domain (`webhook.policy`, `webhook.certs`,
`webhook.mutate`, `webhook.cluster.*`) with `Settings` and plain arguments, and turn what
comes back into output, messages and exit statuses. Nothing outside this package and
`webhook/cli.py` imports click. `webhook.cli.COMMANDS` imports each module only when its
command runs, so `--help` stays fast and `serve` never loads the `kubernetes` client.
"""
