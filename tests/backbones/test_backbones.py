"""Every registered backbone through the same contract: output (B, embedding_dim) at 28x28, 112x96 and
112x112 inputs with one and three channels, gradients reaching every trainable parameter, and a registry
entry that ``bench list backbones`` can show. Plus the architecture facts the face results rest on."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from registry import BACKBONES, DATASETS, RegistryError
from registry.backbones import SUPPORTED_SIZES
from registry.backbones.timm_family import GRID_MODELS

ALL = BACKBONES.names() + [f"timm/{m}" for m in GRID_MODELS]
# Every size is run with one channel count and 28x28 with both, so each size and each count is covered
# without the whole cross product (the 112x112 nets cost seconds each on two cores).
CASES = [((28, 28), 1), ((28, 28), 3), ((112, 96), 3), ((112, 112), 1)]
EMBEDDING_DIM = 24


def test_the_issue_backbones_are_registered():
    # The names the seeds and grids use.
    for name in ("sphereface", "sphere20a", "iresnet50", "mobilefacenet", "lenet++", "mini-resnet18"):
        assert name in BACKBONES.names()
    for model in GRID_MODELS:
        assert f"timm/{model}" in BACKBONES


def test_cases_cover_every_supported_size_and_channel_count():
    assert {size for size, _ in CASES} == set(SUPPORTED_SIZES)
    assert {chans for _, chans in CASES} == {1, 3}


def _build(name: str, size: tuple[int, int], in_chans: int) -> torch.nn.Module:
    params = BACKBONES.parameters(name)
    kwargs = {"input_size": list(size)} if "input_size" in params else {}
    return BACKBONES.create(name, embedding_dim=EMBEDDING_DIM, in_chans=in_chans, **kwargs)


@pytest.mark.parametrize("size,in_chans", CASES, ids=[f"{h}x{w}-c{c}" for (h, w), c in CASES])
@pytest.mark.parametrize("name", ALL)
def test_output_shape(name, size, in_chans):
    # (B, C, H, W) -> (B, embedding_dim), finite, in training mode (batch statistics on a batch of two).
    torch.manual_seed(0)
    net = _build(name, size, in_chans).train()
    with torch.no_grad():
        out = net(torch.randn(2, in_chans, *size))
    assert out.shape == (2, EMBEDDING_DIM)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL)
def test_backward_reaches_every_trainable_parameter(name):
    # One training step's backward pass (at the cheapest size) gives every trainable parameter a finite
    # gradient and changes the loss; the forward shape at every size is the test above.
    torch.manual_seed(0)
    net = _build(name, (28, 28), 3).train()
    out = net(torch.randn(2, 3, 28, 28))
    out.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reached {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", ALL)
def test_eval_mode_embeds_each_image_on_its_own(name):
    # Test and verification embeddings are taken in eval mode: there an image's embedding must not depend on
    # the rest of its batch (BatchNorm on running statistics, dropout off), and two passes agree. A train step
    # first so the running statistics are not their initial (0, 1).
    torch.manual_seed(0)
    net = _build(name, (28, 28), 3).train()
    net(torch.randn(4, 3, 28, 28) * 2 + 0.5).square().mean().backward()
    net.eval()
    images = torch.randn(3, 3, 28, 28)
    with torch.no_grad():
        batch, again = net(images), net(images)
        alone = torch.cat([net(images[i:i + 1]) for i in range(len(images))])
    assert batch.shape == (3, EMBEDDING_DIM) and torch.isfinite(batch).all()
    assert torch.equal(batch, again)
    # Relative to the embeddings' scale: an untrained iresnet50 in eval mode outputs ~1e12, where float32's
    # reduction order alone moves the last digits.
    scale = batch.abs().max()
    torch.testing.assert_close(alone / scale, batch / scale, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_listed_with_parameters_and_summary(name):
    # What `bench list backbones` prints: the name, a one-line summary, the user parameters with defaults.
    entry = BACKBONES.entry(name)
    assert entry.summary
    params = BACKBONES.parameters(name)
    assert "embedding_dim" not in params and "in_chans" not in params  # the harness passes those
    assert all(v is not inspect.Parameter.empty for v in params.values()), "every user parameter has a default"
    if not name.startswith("timm/"):
        assert name in BACKBONES.names()


def _prototxt_trainable_params(units: tuple[int, int, int, int]) -> int:
    # The learnable blobs of wy1iu/sphereface's sphereface_model.prototxt (make_spherenet.py for other depths),
    # counted layer by layer: each stage's stride conv convN_1 (3x3 weights, bias with lr_mult 2) and PReLU
    # (one slope per channel), then per residual unit two 3x3 convs whose bias has lr_mult 0 (not counted)
    # and their PReLUs; fc5 (512*7*6 -> 512, bias lr_mult 2). fc6 (MarginInnerProduct) belongs to the head.
    total, cin = 0, 3
    for cout, n in zip((64, 128, 256, 512), units, strict=True):
        total += cin * cout * 9 + cout + cout  # convN_1 weight + bias, reluN_1 slopes
        total += n * 2 * (cout * cout * 9 + cout)  # unit convs (weights only) + their PReLU slopes
        cin = cout
    return total + 512 * 7 * 6 * 512 + 512


def test_sphere20a_has_the_trainable_parameters_of_the_sphereface20_prototxt():
    # SphereFace-20 at 112x96 with the 512-d fc5: 11.65 M in the 20 convs, 11.01 M in fc5 (512*7*6 -> 512),
    # 4672 PReLU slopes: 22,666,944 learnable values in the prototxt, the "about 22.7 M" of the released model.
    # The 16 residual-unit convs' biases (3,712 values) are frozen at zero there (lr_mult 0): no bias here.
    net = BACKBONES.create("sphere20a", embedding_dim=512, in_chans=3)
    assert _prototxt_trainable_params((1, 2, 4, 1)) == 22_666_944
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == 22_666_944
    assert sum(p.numel() for p in net.parameters()) == 22_666_944
    assert net.fc5.in_features == 512 * 7 * 6
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 20
    assert [m.stride for m in convs if m.bias is not None] == [(2, 2)] * 4


def test_sphereface_stride_convs_and_fc5_use_caffes_xavier_filler():
    # The prototxt's "xavier" filler is uniform in +-sqrt(3 / fan_in) (Caffe's default variance_norm FAN_IN),
    # not Glorot's +-sqrt(6 / (fan_in + fan_out)): the first conv (fan_in 27) reaches +-0.333, fc5
    # (fan_in 21504) stays within +-0.0118. With >= 1728 draws the largest lies within 1% of the bound.
    torch.manual_seed(0)
    net = BACKBONES.create("sphere20a", embedding_dim=512, in_chans=3)
    stride_convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert len(stride_convs) == 4
    for layer in [*stride_convs, net.fc5]:
        bound = math.sqrt(3 / layer.weight[0].numel())
        largest = layer.weight.abs().max().item()
        assert 0.99 * bound <= largest <= bound, (layer, largest, bound)
        assert not layer.bias.any()


@pytest.mark.parametrize("depth,convs,units,params", [
    (4, 4, (0, 0, 0, 0), 12_562_496), (10, 10, (0, 1, 2, 0), 15_217_984), (20, 20, (1, 2, 4, 1), 22_666_944),
    (36, 36, (2, 4, 8, 2), 32_771_392), (64, 64, (3, 8, 16, 3), 48_186_816)])
def test_sphereface_depths_follow_table_2(depth, convs, units, params):
    # Paper Table 2: the depth counts conv layers (4 stride convs + 2 per residual unit) plus fc5; the
    # parameters are those make_spherenet.py's prototxt learns (no bias in residual units).
    net = BACKBONES.create("sphereface", embedding_dim=512, in_chans=3, depth=depth)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == convs
    assert _prototxt_trainable_params(units) == params
    assert sum(p.numel() for p in net.parameters()) == params


def test_iresnet50_and_mobilefacenet_match_insightface_sizes():
    # insightface arcface_torch: IResNet-50 is 43.59 M parameters at 112x112 and 512-d (fc over 512x7x7);
    # MobileFaceNet (mbf, scale 2) about 2.06 M with its 7x7 global depthwise conv.
    r50 = BACKBONES.create("iresnet50", embedding_dim=512, in_chans=3)
    assert sum(p.numel() for p in r50.parameters()) == 43_590_848
    assert sum(len(stage) for stage in r50.stages) == 3 + 4 + 14 + 3
    assert not r50.features.weight.requires_grad  # the final BN's scale is fixed at 1
    mbf = BACKBONES.create("mobilefacenet", embedding_dim=512, in_chans=3)
    assert sum(p.numel() for p in mbf.parameters()) == 2_059_520
    assert mbf.gdc[0].kernel_size == (7, 7)


@pytest.mark.parametrize("name", ["sphere20a", "iresnet50", "mobilefacenet"])
def test_a_batch_of_another_size_is_refused_with_the_fix(name):
    # These nets size their last layer by the input; a mismatch says which input_size to set.
    net = BACKBONES.create(name, embedding_dim=8, in_chans=1, input_size=[28, 28])
    with pytest.raises(ValueError, match=r"set the backbone's input_size: \[32, 32\]"):
        net(torch.randn(2, 1, 32, 32))


@pytest.mark.parametrize("name", ["sphereface", "iresnet50", "mobilefacenet"])
def test_input_size_below_16_is_refused_at_validation(name):
    with pytest.raises(RegistryError, match="at least 16"):
        BACKBONES.check(name, {"input_size": [8, 8]})


@pytest.mark.parametrize("name", ["sphereface", "iresnet50", "mobilefacenet"])
@pytest.mark.parametrize("input_size", [[112.9, 96], [112, "96"], "112"])
def test_input_size_that_is_not_two_integers_is_refused_at_validation(name, input_size):
    # Pixels are whole: 112.9 was truncated to 112 in silence, and a string's characters were read as sides.
    with pytest.raises(RegistryError, match="each an integer of at least 16"):
        BACKBONES.check(name, {"input_size": input_size})


@pytest.mark.parametrize("params", [{"scale": 1.5}, {"blocks": [1, 4.5, 6, 2]}, {"blocks": 4}, {"blocks": [1, 4, 6]},
                                    {"scale": 0}])
def test_mobilefacenet_blocks_and_scale_must_be_whole_counts(params):
    # They count layers and multiply channels: named at validation, not a torch TypeError at build time.
    with pytest.raises(RegistryError, match="blocks must be four integers >= 1 and scale an integer >= 1"):
        BACKBONES.check("mobilefacenet", params)


def test_sphereface_depth_is_validated_before_building():
    with pytest.raises(RegistryError, match="depth must be one of 4, 10, 20, 36, 64"):
        BACKBONES.check("sphereface", {"depth": 18})


def test_sphere20a_fixes_its_depth():
    with pytest.raises(RegistryError, match="fixes depth=20"):
        BACKBONES.check("sphere20a", {"depth": 36})


def test_timm_family_builds_with_num_classes_and_in_chans():
    # timm's classifier becomes the embedding layer; extra timm keywords pass through `kwargs`.
    net = BACKBONES.create("timm/mobilenetv3_small_100", embedding_dim=7, in_chans=1, drop_rate=0.1,
                           kwargs={"global_pool": "max"})
    assert net.num_classes == 7 and net.conv_stem.in_channels == 1
    assert net.global_pool.pool_type == "max"


def test_timm_kwargs_may_not_override_the_fixed_arguments():
    with pytest.raises(ValueError, match="kwargs may not set num_classes"):
        BACKBONES.create("timm/mobilenetv3_small_100", embedding_dim=7, in_chans=1, kwargs={"num_classes": 3})


@pytest.mark.parametrize("backbone, key", [("timm/mobilenetv3_small_100", "in_chans"), ("lenet++", "in_chans")])
def test_the_backbones_channels_follow_the_dataset_and_a_grid_setting_them_is_told_where(tmp_path, backbone, key):
    # a backbone is built with the dataset's in_chans (bench.trial.build_models), so RGB images on lenet++ or grey
    # ones on a timm model never reach a convolution of the other width: here 3-channel image files on lenet++
    import numpy as np
    from PIL import Image

    from bench.grid import GridError, load_grid
    from bench.trial import build_models

    for c in range(2):
        (tmp_path / "faces" / f"id{c}").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((20, 20, 3), 40 * i + c, np.uint8)).save(tmp_path / "faces" / f"id{c}" / f"{i}.png")
    dataset = f"{{name: imagefolder, root: {tmp_path / 'faces'}, split: none}}"
    grid = tmp_path / "g.yaml"
    grid.write_text(f"name: g\nbase: {{dataset: {dataset}, backbone: {backbone}, loss: softmax, embedding_dim: 2}}\n")
    spec = load_grid(grid).cells[0].spec
    bundle = DATASETS.create("imagefolder", **spec.dataset_params)
    net, _, _ = build_models(spec, bundle)
    image = bundle.train[0][0].float()[None]
    assert image.shape[1] == bundle.in_chans == 3
    assert net.eval()(image).shape == (1, 2)  # eval: batch norm takes one image
    # setting the channels on the backbone is refused with the key that does set them (before: timm's message said
    # "set in_chans as backbone parameters", which the registry then refused as no parameter of the backbone)
    at = "kwargs: {in_chans: 1}" if backbone.startswith("timm/") else "in_chans: 1"
    grid.write_text(f"name: g\nbase: {{dataset: {dataset}, backbone: {{name: {backbone}, {at}}}, loss: softmax, "
                    f"embedding_dim: 2}}\n")
    with pytest.raises(GridError) as err:
        load_grid(grid)
    assert err.value.key == "base.backbone"
    assert "set the dataset's in_chans" in str(err.value)


@pytest.mark.parametrize("params,says", [({"drop_rate": 1.5}, "drop_rate must be a number in"),
                                          ({"drop_rate": -0.1}, "drop_rate must be a number in"),
                                          ({"drop_path_rate": 2.0}, "drop_path_rate must be a number in"),
                                          ({"kwargs": [1]}, "kwargs must be a mapping")])
def test_timm_drop_rates_and_kwargs_are_validated_before_building(params, says):
    # timm takes them and fails only in the first training step (drop_rate 1.5 as a dropout probability,
    # drop_path_rate 2 as a negative Bernoulli probability), after the grid was declared valid.
    with pytest.raises(RegistryError, match=says):
        BACKBONES.check("timm/mobilenetv3_small_100", params)


@pytest.mark.parametrize("kwargs, says", [
    ({"bogus_key": 1}, r"cannot be built with kwargs.bogus_key: timm says .*unexpected keyword argument 'bogus_key'"
                       r".* Valid kwargs keys: .*global_pool"),
    ({"se_layer": 3}, r"kwargs.se_layer: timm says .*multiple values for keyword argument 'se_layer'"),
    ({"num_classes": 3}, "kwargs may not set num_classes.* set embedding_dim"),
    ({"global_pool": "avg"}, None),
])
def test_timm_kwargs_the_model_does_not_take_are_refused_by_check_as_the_build_would(kwargs, says):
    # An unknown key passed check() and failed only when the first trial built the model; check() now builds it
    # on the meta device. The reference is timm's own build on the CPU with the same keywords.
    import timm

    build = dict(num_classes=4, in_chans=1, drop_rate=0.0)
    if says is None:
        BACKBONES.check("timm/mobilenetv3_small_100", {"kwargs": kwargs})
        timm.create_model("mobilenetv3_small_100", **build, **kwargs)
        return
    with pytest.raises(RegistryError, match=says):
        BACKBONES.check("timm/mobilenetv3_small_100", {"kwargs": kwargs})
    with pytest.raises(TypeError):
        timm.create_model("mobilenetv3_small_100", **build, **kwargs)


def test_unknown_timm_model_suggests_close_names():
    with pytest.raises(RegistryError, match="Did you mean 'timm/mobilenetv3_small_100'"):
        BACKBONES.entry("timm/mobilenetv3_smal_100")
