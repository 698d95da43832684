"""Core kernels: fused contrastive losses and flash attention, with torch references.

Public API (imported lazily: `import vecap_cli.core` loads neither triton nor
open_clip; each name loads its own module on first use):

    clip_loss(image, text, logit_scale, logit_bias=None, *, backend=None)
    clip_loss_local(image, text, all_image, all_text, logit_scale, logit_bias=None,
                    *, label_offset, backend=None)
    siglip_loss(image, text, logit_scale, logit_bias=None, *, label_offset=0,
                negative_only=False, chunk_size=0, backend=None)
    multipos_clip_loss(image, text, logit_scale, logit_bias=None, *, positives, backend=None)
    multipos_clip_loss_local(image, text, all_image, all_text, logit_scale, logit_bias=None,
                             *, positives, label_offset, backend=None)
    multipos_siglip_loss(image, text, logit_scale, logit_bias=None, *, positives,
                         label_offset=0, backend=None)
                                        K captions per image, texts (B·K, D) grouped by image
    distill_loss(image, text, logit_scale, teacher_image, teacher_text, teacher_scale=100,
                 *, backend=None)       MobileCLIP's KL to a frozen teacher's similarities
    distill_loss_local(image, text, all_image, all_text, logit_scale, teacher_image,
                       teacher_text, all_teacher_image, all_teacher_text, teacher_scale=100,
                       *, backend=None)
    flash_attention(q, k, v, causal=False, key_padding_mask=None, scale=None, *, backend=None)
    FusedClipLoss, FusedSigLipLoss      open_clip's ClipLoss / SigLipLoss interfaces
    FusedDistillClipLoss                open_clip's DistillClipLoss interface
    FusedMultiPosClipLoss, FusedMultiPosSigLipLoss   the same, K positives, across ranks
    use_fused_attention(model), restore_attention(model)
    clip_loss_reference, siglip_loss_reference, attention_reference,
    multipos_clip_loss_reference, multipos_siglip_loss_reference, distill_loss_reference

Dispatch: CUDA tensors run the Triton kernels, CPU tensors the tiled torch path
(which never holds the B×B logits either). The environment variable

    VECAP_KERNELS=torch|triton

forces one side for every op; it is read at call time. An op's `backend=`
argument wins over it. Forcing triton on CPU tensors needs Triton's
interpreter (TRITON_INTERPRET=1, set before the first kernel import).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "clip_loss": "vecap_cli.core.clip",
    "clip_loss_local": "vecap_cli.core.clip",
    "clip_loss_reference": "vecap_cli.core.clip",
    "FusedClipLoss": "vecap_cli.core.clip",
    "siglip_loss": "vecap_cli.core.siglip",
    "siglip_loss_reference": "vecap_cli.core.siglip",
    "FusedSigLipLoss": "vecap_cli.core.siglip",
    "multipos_clip_loss": "vecap_cli.core.multipos",
    "multipos_clip_loss_reference": "vecap_cli.core.multipos",
    "multipos_clip_loss_local": "vecap_cli.core.multipos",
    "FusedMultiPosClipLoss": "vecap_cli.core.multipos",
    "FusedMultiPosSigLipLoss": "vecap_cli.core.multipos",
    "multipos_siglip_loss": "vecap_cli.core.multipos",
    "multipos_siglip_loss_reference": "vecap_cli.core.multipos",
    "distill_loss": "vecap_cli.core.distill",
    "distill_loss_local": "vecap_cli.core.distill",
    "distill_loss_reference": "vecap_cli.core.distill",
    "FusedDistillClipLoss": "vecap_cli.core.distill",
    "flash_attention": "vecap_cli.core.attention",
    "attention_reference": "vecap_cli.core.attention",
    "use_fused_attention": "vecap_cli.core.attention_patch",
    "restore_attention": "vecap_cli.core.attention_patch",
    "ENV_VAR": "vecap_cli.core.dispatch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
