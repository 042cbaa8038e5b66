"""The trainer's parts, one idea per module; dist_llm/train.py composes them into the loop.

plan (batch arithmetic and run length), optimizer (AdamW param groups and the LR schedule),
precision (autocast and the gradient scaler), evaluation (validation loss, perplexity, bits per byte),
signals (stop requests agreed across ranks), resume (choosing and restoring a checkpoint),
outputs (the final model, the sample and the loss plot).
"""
