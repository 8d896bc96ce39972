"""Pure per-field ops: illumination functions, QC, measurement names, profile_field."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import imports

from raymmi import testing
from raymmi.images import (
    IllumSums,
    ProfileConfig,
    field_qc,
    illumination_function,
    illumination_functions,
    measure_objects,
    profile_field,
)
from raymmi.io import scale_to_unit


def test_illumination_sums_merge_and_function():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    shading = 1.0 - 0.3 * ((yy - 32) ** 2 + (xx - 32) ** 2) / 2048
    fields = [
        {"DNA": (0.2 * shading * (1 + 0.05 * rng.random((64, 64)))).astype(np.float32)}
        for _ in range(6)
    ]
    a, b = IllumSums(), IllumSums()
    for f in fields[:2]:
        a.add(f)
    for f in fields[2:]:
        b.add(f)
    merged = a.merge(b)
    whole = IllumSums()
    for f in fields:
        whole.add(f)
    assert merged.count == 6
    np.testing.assert_allclose(merged.sums["DNA"], whole.sums["DNA"])
    illum = illumination_functions(merged)["DNA"]
    assert illum.min() >= 1.0 and illum.dtype == np.float32
    # dividing by it flattens the shading: corner and centre agree within a few percent
    corrected = fields[0]["DNA"] / illum
    assert abs(corrected[2:6, 2:6].mean() / corrected[30:34, 30:34].mean() - 1) < 0.05
    assert abs(fields[0]["DNA"][2:6, 2:6].mean() / fields[0]["DNA"][30:34, 30:34].mean() - 1) > 0.2
    assert np.all(illumination_function(np.zeros((8, 8))) == 1)
    with pytest.raises(ValueError, match="at least one field"):
        illumination_functions(IllumSums())


def test_cellprofiler_names_and_missing_objects():
    labels = np.zeros((40, 40), np.int32)
    labels[5:15, 5:15] = 1
    labels[20:30, 20:35] = 3  # label 2 absent: its row is NaN, label 3 stays at index 2
    images = {
        "DNA": np.full((40, 40), 0.5, np.float32),
        "AGP": np.full((40, 40), 0.25, np.float32),
    }
    out = measure_objects(
        labels,
        images,
        compartment="Cells",
        measures=("sizeshape", "intensity", "texture", "granularity", "radial", "correlation"),
    )
    for name in (
        "Cells_AreaShape_Area",
        "Cells_AreaShape_Zernike_0_0",
        "Cells_Intensity_MeanIntensity_DNA",
        "Cells_Location_CenterMassIntensity_X_AGP",
        "Cells_Texture_Contrast_DNA_3_00_256",
        "Cells_Granularity_1_AGP",
        "Cells_RadialDistribution_FracAtD_DNA_1of4",
        "Cells_RadialDistribution_ZernikeMagnitude_AGP_0_0",
        "Cells_Correlation_Correlation_AGP_DNA",
        "Cells_Correlation_Manders_DNA_AGP",
        "Cells_Correlation_Manders_AGP_DNA",
    ):
        assert name in out, name
        assert out[name].shape == (3,)
    area = out["Cells_AreaShape_Area"]
    assert area[0] == 100 and np.isnan(area[1]) and area[2] == 150
    assert out["Cells_Intensity_MeanIntensity_AGP"][2] == pytest.approx(0.25)


def test_profile_generated_field_and_qc():
    spec = testing.FieldSetSpec(size=256)
    planes, drawn = testing.generate_field(spec, 0, 0, 0)
    images = {c: scale_to_unit(p) for c, p in planes.items()}
    config = ProfileConfig(nuclei_channel="DNA", cell_channel="AGP", measures=("sizeshape",))
    result = profile_field(images, config=config)
    assert 0 < result.n_cells <= drawn
    assert result.qc["Count_Cells"] == result.n_cells and not result.qc["blank"]
    np.testing.assert_array_equal(
        result.columns["Metadata_ObjectNumber"], np.arange(1, result.n_cells + 1)
    )
    median = np.median(result.columns["Nuclei_AreaShape_Area"])
    assert abs(median / testing._images.NUCLEUS_AREA - 1) < 0.3
    saturated = {"DNA": np.ones((32, 32), np.float32)}
    qc = field_qc(saturated, nuclei_channel="DNA", objects={"Nuclei": np.zeros((32, 32), int)})
    assert qc["Saturation_DNA"] == 1.0 and qc["blank"] and qc["Count_Cells"] == 0


def test_crops_and_embedder(tmp_path):
    import torch

    from raymmi.images import CropEmbedder, build_cnn, crops

    nuclei = np.zeros((50, 50), np.int32)
    nuclei[1:4, 1:4] = 1  # at the corner: the crop is zero-padded
    nuclei[20:30, 20:30] = 2
    images = {
        "DNA": np.where(nuclei > 0, 0.8, 0.1).astype(np.float32),
        "AGP": np.full((50, 50), 0.3, np.float32),
    }
    batch = crops(images, nuclei, size=16)
    assert batch.shape == (2, 2, 16, 16)
    assert batch[1, 0, 8, 8] == pytest.approx(0.8) and batch[0, 0, 0, 0] == 0
    path = tmp_path / "w.pt"
    torch.save(build_cnn(2).state_dict(), path)
    embedder = CropEmbedder(
        model="cnn-small", weights=str(path), channels=("DNA", "AGP"), crop_size=16
    )
    out = embedder(images, nuclei)
    assert out.shape == (2, 128) and np.isfinite(out).all()
    with pytest.warns(UserWarning, match="random"):
        CropEmbedder(model="cnn-small", weights="random", channels=("DNA",), crop_size=16)


def test_architecture_names_and_missing_libraries():
    from raymmi.images import embedding_dim, parse_architecture

    assert parse_architecture("cnn-small") == (None, "cnn-small")
    assert parse_architecture("timm:resnet18") == ("timm", "resnet18")
    assert parse_architecture("torchvision:resnet18") == ("torchvision", "resnet18")
    for bad in ("resnet18", "keras:resnet", "timm:"):
        with pytest.raises(ValueError, match="torchvision:<name> or timm:<name>"):
            parse_architecture(bad)
    assert embedding_dim("cnn-small") == 128
    for library in ("torchvision", "timm"):
        if not imports(library):
            with pytest.raises(ValueError, match=r"pip install torch==2\.14\.1 torchvision"):
                embedding_dim(f"{library}:resnet18", in_channels=3)


def _stand_in(in_channels: int = 3):
    """A tiny classifier with the parts torchvision models have: first conv ... last Linear."""
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


def test_stock_weights_fit_to_the_fields_channels():
    """First conv rebuilt for 5 channels, classifier dropped, stock RGB kernels shared out."""
    import torch

    from raymmi.images import adapt_input_conv, adapt_state_dict, drop_classifier

    torch.manual_seed(0)
    stock = _stand_in(3)
    state = stock.state_dict()
    net = _stand_in(3)
    first = adapt_input_conv(net, 5)
    classifier, width = drop_classifier(net)
    assert (first, classifier, width) == ("0", "4", 8)
    assert net[0].in_channels == 5 and isinstance(net[4], torch.nn.Identity)
    fitted = adapt_state_dict(state, net, {"first_conv": first, "classifier": classifier})
    assert "4.weight" not in fitted and fitted["0.weight"].shape == (8, 5, 3, 3)
    net.load_state_dict(fitted)  # strict: every remaining key fits
    # an image equal in every channel gets the stock network's response to that grey image
    grey = torch.rand(2, 1, 12, 12)
    features_stock = stock[:4](grey.repeat(1, 3, 1, 1))
    with torch.no_grad():
        assert torch.allclose(net(grey.repeat(1, 5, 1, 1)), features_stock, atol=1e-5)
    with pytest.raises(ValueError, match="no final linear layer"):
        drop_classifier(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)))


@pytest.mark.skipif(not imports("torchvision"), reason="torchvision does not import here")
@pytest.mark.parametrize("model", ["torchvision:resnet18", "timm:resnet18"])
def test_library_architectures_embed_crops(model, tmp_path):
    """torchvision / timm ResNet-18 on 5-channel crops, from stock 3-channel weight files."""
    import torch

    from raymmi.images import CropEmbedder, embedding_dim

    library, name = model.split(":")
    if library == "timm":
        if not imports("timm"):
            pytest.skip("timm is not installed")
        import timm

        stock = timm.create_model(name, pretrained=False)
    else:
        import torchvision

        stock = torchvision.models.get_model(name, weights=None)
    path = tmp_path / "stock.pt"
    torch.save(stock.state_dict(), path)  # 3 input channels and a 1000-class head
    channels = ("DNA", "ER", "RNA", "AGP", "Mito")
    assert embedding_dim(model, in_channels=5, crop_size=48) == 512
    embedder = CropEmbedder(model=model, weights=str(path), channels=channels, crop_size=48)
    nuclei = np.zeros((100, 100), np.int32)
    nuclei[20:30, 20:30] = 1
    nuclei[60:72, 50:64] = 2
    rng = np.random.default_rng(0)
    images = {c: rng.random((100, 100)).astype(np.float32) for c in channels}
    out = embedder(images, nuclei)
    assert out.shape == (2, 512) and np.isfinite(out).all() and not np.allclose(out[0], out[1])
    with pytest.raises(ValueError, match="has no model"):
        embedding_dim(f"{library}:no_such_net", in_channels=5)
