"""convert.source.locate on folders as users hand them over: macOS copies, models one folder down. Files only (the
model's bytes are never parsed here), so this runs in milliseconds without Paddle."""
import pytest

from paddle2ort.convert.errors import BadInputError
from paddle2ort.convert.source import locate


def legacy_pair(folder, name="inference"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.pdmodel").write_bytes(b"\x0a\x00program")
    (folder / f"{name}.pdiparams").write_bytes(b"\x00" * 64)
    return folder


def test_macos_appledouble_companions_are_not_models(tmp_path):
    d = legacy_pair(tmp_path / "cls")
    (d / "._inference.pdmodel").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 172)   # AppleDouble header
    (d / "._inference.pdiparams").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 172)
    assert locate(d).model_file.name == "inference.pdmodel"


def test_a_program_without_its_params_gives_way_to_one_with_them(tmp_path):
    d = legacy_pair(tmp_path / "m")
    (d / "draft.pdmodel").write_bytes(b"\x0a\x00")
    assert locate(d).model_file.name == "inference.pdmodel"


def test_two_complete_models_still_ask_which(tmp_path):
    d = legacy_pair(legacy_pair(tmp_path / "two"), "other")
    with pytest.raises(BadInputError, match="holds 2 Paddle models"):
        locate(d)


def test_a_folder_above_the_model_names_the_subfolder(tmp_path):
    legacy_pair(tmp_path / "pkg" / "det_model")
    (tmp_path / "pkg" / "conf").mkdir()
    with pytest.raises(BadInputError, match=r"a model is in the subfolder\(s\) det_model: pass that folder"):
        locate(tmp_path / "pkg")


def test_convert_refuses_an_output_inside_the_source_folder(tmp_path):
    """-o inside SRC would write a second model folder into the user's (checked before Paddle starts)."""
    from paddle2ort.convert import ConvertConfig, convert
    src = legacy_pair(tmp_path / "model")
    with pytest.raises(BadInputError, match=r"-o .*bundle is inside the source model folder .*e\.g\. -o "):
        convert(ConvertConfig(source=src, output=src / "bundle"))
    assert sorted(p.name for p in src.iterdir()) == ["inference.pdiparams", "inference.pdmodel"]
