"""Model inputs as rows: split a batch into single rows, merge rows (of several requests) into one batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

Inputs = dict[str, torch.Tensor]


def merge_inputs(parts: Sequence[Inputs], pad_token_id: int) -> Inputs:
    """One left-padded batch from several (each: `input_ids`, `attention_mask`, maybe `input_features`)."""
    width = max(int(p["input_ids"].shape[1]) for p in parts)
    ids = [F.pad(p["input_ids"], (width - p["input_ids"].shape[1], 0), value=pad_token_id) for p in parts]
    masks = [F.pad(p["attention_mask"], (width - p["attention_mask"].shape[1], 0)) for p in parts]
    merged = {"input_ids": torch.cat(ids), "attention_mask": torch.cat(masks)}
    features = [p["input_features"] for p in parts if "input_features" in p and p["input_features"].numel()]
    if features:
        merged["input_features"] = torch.cat(features)
    return merged


def split_rows(inputs: Any, audio_token_id: int) -> list[Inputs]:
    """Each row of a left-padded batch on its own, padding removed, with its own audio windows."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    features = inputs.get("input_features")
    audio = (ids == audio_token_id).sum(dim=1).tolist()
    windows_total = 0 if features is None else int(features.shape[0])
    per_window = sum(audio) // windows_total if windows_total else 0
    rows: list[Inputs] = []
    first_window = 0
    for i in range(ids.shape[0]):
        keep = mask[i].bool()
        row: Inputs = {"input_ids": ids[i][keep][None], "attention_mask": mask[i][keep][None]}
        if features is not None and per_window:
            count = audio[i] // per_window
            row["input_features"] = features[first_window : first_window + count]
            first_window += count
        rows.append(row)
    return rows
