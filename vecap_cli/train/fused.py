"""The seam to the core's fused kernels (`vecap_cli.core`): what this build has.

The core is optional to this package: when it is absent, training runs on
open_clip's own losses and attention. Nothing here swallows an error raised
*inside* the core; only a core that is not there at all counts as missing.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType


def core() -> ModuleType | None:
    if importlib.util.find_spec("vecap_cli.core") is None:
        return None
    module = importlib.import_module("vecap_cli.core")
    return module if "FusedClipLoss" in getattr(module, "__all__", ()) else None


def fused_losses() -> tuple[type, type] | None:
    """(FusedClipLoss, FusedSigLipLoss), open_clip's ClipLoss / SigLipLoss interfaces."""
    module = core()
    return None if module is None else (module.FusedClipLoss, module.FusedSigLipLoss)


def fused_attention():
    """`use_fused_attention(model) -> int`, or None."""
    module = core()
    if module is None or "use_fused_attention" not in module.__all__:
        return None
    return module.use_fused_attention
