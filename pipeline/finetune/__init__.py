"""`finetune`: the fine-tuning baselines that local heads are measured against. An open_clip encoder
is trained end to end (all of it, or its last blocks) on a registered dataset's images and captions,
with the dataset's hard negative captions and images as extra candidates when asked (NegCLIP-style).

Unlike everything in trainer/, this runs the encoder in its loop: it reads and decodes images the way
`extract` does (the same loading policy and preprocessing) and backpropagates through both towers.
What it shares with trainer/ is the rest: the scoring groups and their cross-entropy (so a fine-tuned
encoder and a head are trained on the same question), the warm-up/cosine schedule and the health
checks. The result, `<out>/model.pt`, is a plain state_dict that `vlcache extract --pretrained` takes:
the fine-tuned encoder gets its own embedding space (named by the file's sha256) in the same store,
and `vlcache eval` scores it like any head. `<out>/state.pt` holds everything a resumed run needs.

config.py holds the settings (no torch: the CLI reads their defaults); loop.py the run."""
