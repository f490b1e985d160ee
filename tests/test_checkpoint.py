"""Our checkpoint format, strict loading with named mismatches, and refusal of code-carrying pickles."""

import os

import pytest
import torch
from conftest import PARITY_DIR

import efficientdet
from efficientdet import CheckpointError
from efficientdet.models.weights import read_checkpoint


def test_own_format_round_trip(tmp_path):
    model = efficientdet.create_model("efficientdet-lite0", num_classes=3, fusion="fast").eval()
    path = tmp_path / "m.pt"
    efficientdet.save_model(model, path, class_names=["cat", "dog", "bird"])
    # plain containers only: loads with weights_only=True
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "efficientdet" and raw["config"]["num_classes"] == 3
    again = efficientdet.create_model("efficientdet-lite0", checkpoint=path).eval()
    assert again.config == model.config and again.class_names == ["cat", "dog", "bird"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x)[0][0], again(x)[0][0])
    assert not [p for p in os.listdir(tmp_path) if p != "m.pt"], "no temp files left behind"


def test_own_format_refuses_another_variant(tmp_path):
    path = tmp_path / "lite.pt"
    efficientdet.save_model(efficientdet.create_model("efficientdet-lite0", num_classes=2), path)
    with pytest.raises(CheckpointError, match="holds an efficientdet-lite0 model, not efficientdet-lite1"):
        efficientdet.create_model("efficientdet-lite1", checkpoint=path)


def test_wrong_variant_names_mismatched_keys_and_shapes():
    with pytest.raises(CheckpointError) as err:
        efficientdet.create_model("efficientdet-d1", checkpoint=PARITY_DIR / "tf_efficientdet_d0_256.pt")
    msg = str(err.value)
    assert "tf_efficientdet_d0_256.pt does not fit the model" in msg
    assert "shape mismatches" in msg and "checkpoint (64, 320, 1, 1) vs model (88, 320, 1, 1)" in msg
    assert "missing keys" in msg  # D1 has a 4th BiFPN cell


def test_weighted_checkpoint_into_sum_fusion_names_the_unexpected_weights():
    with pytest.raises(CheckpointError, match=r"unexpected keys:\n    fpn\.cells\.0\.nodes\.0\.edge_weights"):
        efficientdet.create_model("efficientdet-d0", checkpoint=PARITY_DIR / "efficientdet_d0_128.pt", fusion="sum")


def test_class_count_conflict_is_an_error_and_absent_count_is_inferred(tmp_path):
    path = PARITY_DIR / "efficientdet_d0_128.pt"
    with pytest.raises(CheckpointError, match="has 90 classes but num_classes=20"):
        efficientdet.create_model("efficientdet-d0", num_classes=20, checkpoint=path)
    assert efficientdet.create_model("efficientdet-d0", checkpoint=path).config.num_classes == 90


def test_truncated_tensor_is_reported_by_key(tmp_path):
    sd = torch.load(PARITY_DIR / "efficientdet_d0_128.pt", weights_only=True)["state_dict"]
    sd = dict(sd)
    sd["box_net.predict.conv_pw.weight"] = sd["box_net.predict.conv_pw.weight"][:30]
    del sd["class_net.bn_rep.1.2.bn.running_var"]
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as err:
        efficientdet.create_model("efficientdet-d0", checkpoint=path)
    msg = str(err.value)
    assert "box_net.predict.pointwise.weight: checkpoint (30, 64, 1, 1) vs model (36, 64, 1, 1)" in msg
    assert "class_net.norms.1.2.running_var" in msg


class _RunsCode:
    """Unpickling this calls os.system: exactly what a hostile model file does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _RunsCode(marker)}, f)
    with pytest.raises(CheckpointError, match="refused to load.*could run code"):
        efficientdet.create_model("efficientdet-d0", checkpoint=path)
    assert not marker.exists()
    # control: the same file really does run code when unpickled without protection
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_unreadable_and_missing_files(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pth"):
        read_checkpoint(junk)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        read_checkpoint(tmp_path / "absent.pth")
    unknown = tmp_path / "unknown.pth"
    torch.save({"foo.bar": torch.zeros(1)}, unknown)
    with pytest.raises(CheckpointError, match="unrecognised key layout"):
        read_checkpoint(unknown)


def test_safetensors_checkpoint(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    sd = torch.load(PARITY_DIR / "tf_efficientdet_lite0_128.pt", weights_only=True)["state_dict"]
    path = tmp_path / "lite0.safetensors"
    safetensors.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    model = efficientdet.create_model("efficientdet-lite0", checkpoint=path)
    assert model.config.padding == "same" and model.config.redundant_bias


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04"])
def test_an_empty_or_cut_file_says_why_it_cannot_be_read(tmp_path, content):
    from efficientdet.models.weights import read_file

    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        read_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable PyTorch checkpoint (") and "()" not in message
    assert ("an empty file" in message) == (content == b"")


def test_a_text_file_or_a_folder_is_not_called_a_dangerous_pickle(tmp_path):
    """`train --resume script.py` said the file "holds pickled Python objects ... which could run code" (torch's
    safe unpickler failing on text), and `--resume runs/train` "no such checkpoint file" for the run's folder."""
    from efficientdet.models.weights import read_file

    text = tmp_path / "notes.py"
    text.write_text("import torch\nprint('hello')\n")
    with pytest.raises(CheckpointError, match=r"notes.py: not a PyTorch model file \(neither the zip archive nor the "):
        read_file(text)
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(CheckpointError, match=r"run: a folder, not a model file$"):
        read_file(run)
    torch.save({"x": torch.zeros(1)}, run / "last.pt")
    torch.save({"x": torch.zeros(1)}, run / "best.pt")
    with pytest.raises(CheckpointError, match=r"run: a folder, not a model file \(give one of its files: best.pt, "
                       r"last.pt\)"):  # fmt: skip
        read_file(run)


def test_class_names_must_be_one_per_class(tmp_path):
    """A name list of the wrong length was saved as it was, and the first detection of a class without a name
    raised an IndexError far from the cause; now saving, loading and the Detector each say so at once."""
    import numpy as np
    import torch

    import efficientdet
    from efficientdet.inference import Detector

    model = efficientdet.create_model("efficientdet-lite0", num_classes=2, image_size=64)
    with pytest.raises(ValueError, match="1 class name for a model of 2 classes"):
        efficientdet.save_model(model, tmp_path / "m.pt", class_names=["cat"])
    assert not (tmp_path / "m.pt").exists()
    with pytest.raises(ValueError, match="3 class names for a model of 2 classes"):
        Detector(model, class_names=["a", "b", "c"])
    # a file written elsewhere with a wrong list: refused on loading, naming the file
    stored = torch.load(_saved(model, tmp_path / "ok.pt"), weights_only=True)
    stored["class_names"] = ["cat"]
    torch.save(stored, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt: 1 class name for a model of 2 classes"):
        efficientdet.load_checkpoint(tmp_path / "bad.pt")
    detector = Detector(efficientdet.load_checkpoint(tmp_path / "ok.pt"), score_threshold=0.0)
    assert set(detector(np.zeros((40, 40, 3), np.uint8))[0]["label_names"]) <= {"cat", "dog"}


def _saved(model, path):
    import efficientdet

    efficientdet.save_model(model, path, class_names=["cat", "dog"])
    return path
