"""Turn the local copies of the task files (original release formats) into the record
layout of lm-eval's Hugging Face versions, so the prompts are lm-eval's own."""

from __future__ import annotations

from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_choice, doc_to_target, doc_to_text  # noqa: F401


def _flatten_choices(doc: dict) -> dict:
    choices = doc["question"]["choices"]
    return {
        "question": doc["question"]["stem"],
        "question_stem": doc["question"]["stem"],
        "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]},
        "answerKey": doc["answerKey"],
    }


def process_arc(dataset):
    """ARC / OpenBookQA originals: question {stem, choices[{text,label}]} → HF columns."""
    return dataset.map(_flatten_choices, remove_columns=dataset.column_names)
