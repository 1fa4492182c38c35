import json

import numpy as np
import pytest
import torch

from napo.auxiliary import AuxError, load_aux, write_aux

META = {"fingerprint": "abc", "counts": {"splits": {"train": {"examples": 3}}}}


def test_round_trip_and_meta(tmp_path):
    vecs, scores = np.arange(6, dtype=np.float32).reshape(3, 2), torch.ones(3, 4)
    write_aux(tmp_path, "train", vecs, scores, dataset_fingerprint="abc", model="SASRec")
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta == {"dataset_fingerprint": "abc", "model": "SASRec", "dim": 2, "rows": {"train": 3}}
    v, s = load_aux(tmp_path, "train", META)
    assert v.dtype == torch.float32 and s.shape == (3, 4)
    np.testing.assert_array_equal(v.numpy(), vecs)


def test_mismatches_are_errors(tmp_path):
    write_aux(tmp_path, "train", np.zeros((3, 2)), np.zeros((3, 4)), dataset_fingerprint="abc", model="SASRec")
    with pytest.raises(AuxError, match="fingerprint"):
        load_aux(tmp_path, "train", {**META, "fingerprint": "other"})
    with pytest.raises(AuxError, match="rows"):
        load_aux(tmp_path, "train", META, num_rows=5)
    with pytest.raises(AuxError, match="valid"):
        load_aux(tmp_path, "valid", META)
    with pytest.raises(AuxError, match="dim"):
        write_aux(tmp_path, "valid", np.zeros((3, 5)), np.zeros((3, 4)), dataset_fingerprint="abc", model="SASRec")
    with pytest.raises(AuxError, match="same N"):
        write_aux(tmp_path / "x", "train", np.zeros((3, 2)), np.zeros((2, 4)), dataset_fingerprint="abc", model="SASRec")
    with pytest.raises(AuxError, match="not found"):
        load_aux(tmp_path / "missing", "train", META)


def test_truncated_safetensors_file_is_one_clear_error(tmp_path):
    path = write_aux(tmp_path, "train", np.zeros((3, 2)), np.zeros((3, 4)), dataset_fingerprint="abc", model="SASRec")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a copy cut short
    with pytest.raises(AuxError) as err:
        load_aux(tmp_path, "train", META)
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"{path}: unreadable (") and "truncated or corrupt" in line
    path.write_bytes(b"")
    with pytest.raises(AuxError, match="unreadable"):
        load_aux(tmp_path, "train", META)
