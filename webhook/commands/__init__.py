"""The click commands: each parses its options, calls the domain and prints what it returns.

One module per command (`<name>.py` exporting `<name>_command`), registered lazily in
`webhook.cli.COMMANDS`.
"""
