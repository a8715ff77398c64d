import pytest
import timm
from torch import nn

from btxrd_cam.errors import UsageError
from btxrd_cam.layers import auto_layers, feature_stages, get_layer, layer_grids, stage_names


@pytest.mark.parametrize(
    "arch, target, expected",
    [
        ("efficientnet_b0", "bn2", ["bn2", "blocks.6", "blocks.4", "blocks.2"]),
        ("resnet18", "layer4", ["layer4", "layer3", "layer2", "layer1"]),
        ("convnext_atto", "stages.3", ["stages.3", "stages.2", "stages.1", "stages.0"]),
    ],
)
def test_auto_layers_are_the_target_and_three_earlier_stages(arch, target, expected):
    model = timm.create_model(arch, pretrained=False, num_classes=3)
    assert auto_layers(model, target, 224) == expected


def test_efficientnet_b0_grids_at_224():
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=3)
    grids = layer_grids(model, ["bn2", "blocks.6", "blocks.4", "blocks.2"], 224)
    assert grids == {"bn2": (7, 7), "blocks.6": (7, 7), "blocks.4": (14, 14), "blocks.2": (28, 28)}


class PlainNet(nn.Module):
    """No feature_info: stages must be found from the module tree."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Sequential(
            nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc(self.pool(self.body(self.stem(x))).flatten(1))


def test_stages_from_the_module_tree_without_feature_info():
    model = PlainNet()
    assert stage_names(model) == ["body.0", "body.1", "body.2"]
    assert feature_stages(model, 32) == ["body.1", "body.2"]  # the last stage at each resolution
    assert auto_layers(model, "body.2", 32) == ["body.2", "body.1"]


def test_layers_that_are_not_feature_maps_are_refused_by_name():
    model = PlainNet()
    with pytest.raises(UsageError, match=r"--layers: 'fc' outputs \[1, 2\], not a feature map"):
        layer_grids(model, ["fc"], 32)
    with pytest.raises(UsageError, match="top-level layers: stem, body, pool, fc"):
        get_layer(model, "head", "--layers")
