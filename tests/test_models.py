"""Model building: every promised architecture, new heads, and each way of giving weights."""

from pathlib import Path

import pytest
import torch
import torchvision

from cvpipe.errors import CvpipeError
from cvpipe.models import TESTED_MODELS, build_model


@pytest.mark.parametrize("name", TESTED_MODELS)
def test_builds_with_head_for_the_classes(name):
    model = build_model(name, num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def _imagenet_like_resnet18(path: Path, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    state = torchvision.models.resnet18(num_classes=1000).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_local_weights_file_loads_backbone_and_replaces_head(tmp_path):
    state = _imagenet_like_resnet18(tmp_path / "r18.pth")
    model = build_model("resnet18", 4, str(tmp_path / "r18.pth"))
    torch.testing.assert_close(model.conv1.weight, state["conv1.weight"])
    torch.testing.assert_close(model.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert model.fc.out_features == 4


def test_cvpipe_model_file_as_weights(tmp_path):
    trained = build_model("resnet18", 4)
    torch.save(
        {"model": trained.state_dict(), "classes": ["a", "b", "c", "d"]}, tmp_path / "model.pt"
    )
    again = build_model("resnet18", 4, str(tmp_path / "model.pt"))
    torch.testing.assert_close(again.fc.weight, trained.fc.weight)  # same head size: kept


def test_wrong_architecture_weights_are_refused(tmp_path):
    torch.save(torchvision.models.resnet50(num_classes=4).state_dict(), tmp_path / "r50.pth")
    with pytest.raises(CvpipeError, match="do not fit this model"):
        build_model("resnet18", 4, str(tmp_path / "r50.pth"))


def test_named_weights_come_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # A locally made file where torch hub would have downloaded ResNet18_Weights.IMAGENET1K_V1.
    hub_file = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    state = _imagenet_like_resnet18(hub_file, seed=1)
    for name in ("IMAGENET1K_V1", "DEFAULT", "ResNet18_Weights.IMAGENET1K_V1"):
        model = build_model("resnet18", 3, name)
        torch.testing.assert_close(model.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
        assert model.fc.out_features == 3


def test_missing_named_weights_say_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    # No internet here; where there is, a hub URL that cannot be reached behaves the same way.
    monkeypatch.setattr(
        torchvision.models.ResNet18_Weights.IMAGENET1K_V1.value,
        "url",
        "http://127.0.0.1:9/resnet18-f37072fd.pth",
    )
    with pytest.raises(CvpipeError) as err:
        build_model("resnet18", 4, "IMAGENET1K_V1")
    message = str(err.value)
    assert str(tmp_path / "empty" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "pre-place the file" in message


def test_unknown_names_are_errors():
    with pytest.raises(CvpipeError, match="'resnet19' is not a torchvision classification model"):
        build_model("resnet19", 4)
    with pytest.raises(
        CvpipeError, match="'IMAGENET9K' is not a torchvision weights name for resnet18"
    ):
        build_model("resnet18", 4, "IMAGENET9K")
    with pytest.raises(
        CvpipeError, match="neither `none`, a torchvision weights name, nor an existing file"
    ):
        build_model("resnet18", 4, "no/such/file.pth")
