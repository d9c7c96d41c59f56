"""The gate's generated ids stay inside the table they index, found wherever the model looks them up (embedding,
gather, index_select, one_hot, past flatten/reshape/slice...): a 97-row table read by a gather gets ids across
0..96, not {0, 1}; ids no table reads are drawn from {0, 1} with a warning asking for --inputs."""
import logging

import numpy as np


def test_ids_read_by_a_gather_and_a_one_hot_span_their_tables(tiny_models, tmp_path, caplog):
    from paddle2ort.convert import ConvertConfig, convert
    out = tmp_path / "b"
    with caplog.at_level(logging.WARNING, logger="paddle2ort.convert.api"):
        convert(ConvertConfig(source=tiny_models("gather_text"), output=out, precisions=("fp32",)))
    assert "no bound found" not in caplog.text
    with np.load(out / "validation_inputs.npz") as d:
        ids = np.concatenate([d[k].ravel() for k in d.files if k.endswith("/input_ids")])
        types = np.concatenate([d[k].ravel() for k in d.files if k.endswith("/token_type_ids")])
    assert ids.min() >= 0 and ids.max() <= 96 and len(np.unique(ids)) > 40
    assert set(np.unique(types)) == {0, 1}                     # sentence-pair types within the 4 one-hot classes


def test_ids_no_table_reads_are_warned_about(tiny_models, tmp_path, caplog):
    from paddle2ort.convert import ConvertConfig, convert
    with caplog.at_level(logging.WARNING, logger="paddle2ort.convert.api"):
        convert(ConvertConfig(source=tiny_models("no_lookup_text"), output=tmp_path / "b", precisions=("fp32",)))
    assert "no bound found for the integers of input(s) input_ids, token_type_ids" in caplog.text
    assert "--inputs" in caplog.text
