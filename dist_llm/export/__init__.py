"""Export to and import from the Hugging Face ecosystem (Llama weights, byte-level BPE tokenizer.json).

    python -m dist_llm.export hf --run DIR --out DIR
    python -m dist_llm.export import-hf --model DIR --out DIR

Importing this package is cheap: transformers and torch are imported only by the modules that need them.
"""
