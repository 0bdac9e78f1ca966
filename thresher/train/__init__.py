"""Training rounds: examples (data.py, contrast.py), LoRA fine-tuning (sft.py), the judge (judge.py), export to HF
and GGUF (export.py) and the round that ties them together (round.py)."""
