"""`vecap train`: CLIP, SigLIP and CoCa training of open_clip models.

config.py    TrainConfig, every setting, frozen
contrastive.py, attention.py   what --loss and --attn name: registries, no torch
models.py    open_clip models, the built-in tiny configs, attention applied
data.py      deterministic, resumable, counted batches from record streams
teacher.py   --distill: a sample's stored augmentation and teacher embedding rows
losses.py    the objective (the core's fused losses, or open_clip's on request;
             with --distill, MobileCLIP's contrastive + distillation mix)
loop.py      train_step and the Trainer: schedule, AMP, DDP, checkpoints
checkpoint.py, schedule.py, metrics.py, plot.py, validate.py, distributed.py

Entry point: `vecap_cli.train.loop.train(config, run_options) -> Tally`.
"""
