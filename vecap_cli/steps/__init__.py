"""Record logic of each command, as stream stages; no CLI and no I/O here."""
