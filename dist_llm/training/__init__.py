"""The trainer's parts, one idea per module; dist_llm/train.py composes them into the loop.

pipeline (raw text to a cached tokenizer and token files), plan (batch arithmetic and run length),
memory (the per-rank memory plan), preflight and run_lock (checks before any work, one trainer per run
directory), adamw and optimizer (AdamW, its param groups, the LR schedule), precision (autocast and the
gradient scaler), step (forward and backward of one optimizer step), evaluation and references
(validation loss, perplexity, bits per byte, and what they are compared with), metrics (metrics.jsonl,
the progress line), state (checkpoint writing, choosing one and restoring it), init_from (continued
pretraining), signals (stop requests agreed across ranks), outputs (the final model, samples, plot).
"""
