"""Batch generation job: prompts in, samples out (JSONL)."""
