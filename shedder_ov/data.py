"""Text sources (plain text, JSON lines, Alpaca JSON) and fixed-length token windows.

Every stage that scores text (search, recovery, PPL evaluation) takes its tokens from here,
so the same file, tokenizer and window length always give the same windows."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from .errors import ShedderError

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{output}"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n{output}"
)


def format_alpaca(record: dict) -> str:
    """The Stanford Alpaca prompt template, as the reference recovery uses it."""
    template = ALPACA_WITH_INPUT if record.get("input") else ALPACA_NO_INPUT
    return template.format(
        instruction=record.get("instruction", ""), input=record.get("input", ""), output=record.get("output", "")
    )


def read_text(path: Path) -> str:
    """A file's text; binary or non-UTF-8 content is one line naming the file and the first bad byte."""
    data = path.read_bytes()
    nul = data.find(b"\0")
    if nul >= 0:
        raise ShedderError(f"{path}: binary file (NUL byte at offset {nul}), not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ShedderError(f"{path}: not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start})") from None


def read_documents(path: str | Path, fmt: str, text_field: str = "text") -> list[str]:
    """Return the documents of a data file; a plain text file is one document."""
    path = Path(path)
    if not path.is_file():
        raise ShedderError(f"{path}: data file not found")
    if fmt == "text":
        documents = [read_text(path)]
    elif fmt == "jsonl":
        documents = []
        for number, line in enumerate(read_text(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise ShedderError(f"{path}:{number}: not a JSON line") from None
            if not isinstance(record, dict) or text_field not in record:
                raise ShedderError(f"{path}:{number}: record has no field {text_field!r} (set text_field)")
            documents.append(str(record[text_field]))
    elif fmt == "alpaca":
        try:
            records = json.loads(read_text(path))
        except json.JSONDecodeError:
            raise ShedderError(f"{path}: not a JSON file (Alpaca format is a JSON array of records)") from None
        if not isinstance(records, list) or not all(isinstance(r, dict) and "instruction" in r for r in records):
            raise ShedderError(f"{path}: Alpaca format is a JSON array of {{instruction, input, output}} records")
        documents = [format_alpaca(r) for r in records]
    else:
        raise ShedderError(f"{path}: unknown format {fmt!r} (allowed: text, jsonl, alpaca)")
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise ShedderError(f"{path}: no text found")
    return documents


def token_stream(documents: list[str], tokenizer) -> torch.Tensor:
    """Tokenize documents into one stream, separated by the EOS token."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for document in documents:
        if ids and eos is not None:
            ids.append(eos)
        ids.extend(tokenizer(document, add_special_tokens=False)["input_ids"])
    return torch.tensor(ids, dtype=torch.long)


def windows(stream: torch.Tensor, seq_len: int, num_samples: int | None, seed: int, source: str) -> torch.Tensor:
    """Cut the stream into non-overlapping windows and draw `num_samples` of them (seeded).

    `num_samples=None` keeps every window, in order (held-out evaluation)."""
    available = stream.numel() // seq_len
    if available == 0 or (num_samples is not None and available < num_samples):
        raise ShedderError(
            f"{source}: text too short: {stream.numel()} tokens give {available} windows of {seq_len}, "
            f"{num_samples} requested (lower num_samples or seq_len)"
        )
    all_windows = stream[: available * seq_len].view(available, seq_len)
    if num_samples is None:
        return all_windows
    picked = sorted(random.Random(seed).sample(range(available), num_samples))
    return all_windows[picked]


def load_windows(spec, tokenizer, seed: int, num_samples: int | None = None, seq_len: int | None = None) -> torch.Tensor:
    """Token windows [num_samples, seq_len] of a DataSpec (sizes default to the spec's own)."""
    documents = read_documents(spec.path, spec.format, spec.text_field)
    num_samples = num_samples if num_samples is not None else getattr(spec, "num_samples", None)
    seq_len = seq_len or spec.seq_len
    return windows(token_stream(documents, tokenizer), seq_len, num_samples, seed, str(spec.path))
