"""Zero-shot classification and image-text retrieval that agree with clip_benchmark.

metrics   pure functions of embeddings and labels (the definitions)
data      datasets as Sample streams: webdataset, JSONL, image folders, COCO/Karpathy JSON, CSV
prompts   class names and templates (ImageNet-1k and OpenAI's built in)
models    open_clip / vecap checkpoints and Hugging Face CLIPModel directories, one shape
embed     batched encoding, images decoded in threads ahead of the model
dist      data-parallel: each rank embeds its share, the metrics see them all
tasks     evaluate_retrieval / evaluate_zeroshot on any open_clip-style model
run       the `vecap eval` call; report: the tables

Nothing here imports the CLI; torch is imported by the modules that need it.
"""
