"""Small models whose weights are plain numpy arrays (no PyTorch): the safetensors format read and written with
numpy, and the weights of a card loaded with their sha256 checked. The safetensors package belongs to the learned
stack, which the core does not need; its format is an 8-byte little-endian header length, a JSON header and the raw
data, so a few lines read it."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np

from ctqa.errors import InputError
from ctqa.models.registry import bundled_sha256, checkpoint_files, manifest_path, read_json

_DTYPES = {"F64": "<f8", "F32": "<f4"}


def read_safetensors(data: bytes, source: Path) -> dict[str, np.ndarray]:
    """The float tensors (as float64) of a safetensors file's bytes; one InputError line naming source for anything
    else."""
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length])
        tensors = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            start, stop = entry["data_offsets"]
            raw = data[8 + length + start : 8 + length + stop]
            tensors[name] = np.frombuffer(raw, dtype=_DTYPES[entry["dtype"]]).reshape(entry["shape"]).astype(np.float64)
        return tensors
    except (struct.error, ValueError, KeyError, TypeError) as error:
        raise InputError(f"{source}: not a valid safetensors file ({error})") from None


def write_safetensors(tensors: dict[str, np.ndarray], path: Path) -> None:
    """Write float64 tensors as a safetensors file (the format read_safetensors reads)."""
    header, chunks, offset = {}, [], 0
    for name, tensor in tensors.items():
        raw = np.ascontiguousarray(tensor, dtype="<f8").tobytes()
        header[name] = {"dtype": "F64", "shape": list(np.shape(tensor)), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def load_verified(card_path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors, card) of a card X.json and its weights X.safetensors, the weights' sha256 checked against the card
    and, for bundled models, the manifest; InputError naming the file otherwise."""
    card_path, weights_path = checkpoint_files(card_path)
    card = read_json(card_path, "model card")
    try:
        data = weights_path.read_bytes()
    except OSError as error:
        raise InputError(f"{weights_path}: cannot read weights file: {error.strerror}") from None
    digest = hashlib.sha256(data).hexdigest()
    for source, expected in ((card_path, card.get("weights_sha256")), (manifest_path(), bundled_sha256(weights_path))):
        if expected is not None and digest != str(expected).lower():
            raise InputError(f"{weights_path}: sha256 does not match {source.name}: the weights file was replaced")
    return read_safetensors(data, weights_path), card
