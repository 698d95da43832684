"""The command line: thin typer adapters over the stream core and the steps."""
