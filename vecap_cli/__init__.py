"""vecap: VeCLIP-style data and training tools as composable stream commands."""

__version__ = "0.1.0"
