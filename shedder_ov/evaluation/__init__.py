"""Evaluation of torch checkpoints and OpenVINO IRs through one model interface:
perplexity on local text and zero-shot accuracy through lm-evaluation-harness."""
