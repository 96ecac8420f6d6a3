"""Every registered model on every input shape it accepts, and clear refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedsim.errors import ScenarioError
from fedsim.models import MODELS, build_model, register_model

SHAPES = {
    "mlp": [(1, 8, 8), (40,)],
    "cnn": [(1, 8, 8), (1, 28, 28)],
    "cnn1d": [(40,), (2, 40)],
    "lstm": [(40,), (1, 8, 8), (1, 28, 28)],
    "femnist-cnn": [(1, 28, 28)],
    "resnet-gn": [(3, 32, 32), (1, 8, 8)],
}


@pytest.mark.parametrize(("name", "shape"), [(n, s) for n, ss in SHAPES.items() for s in ss])
def test_model_output_shape(name: str, shape: tuple[int, ...]) -> None:
    model = build_model(name, {}, shape, 10)
    out = model(torch.randn(3, *shape))
    assert out.shape == (3, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_every_builtin_model_is_covered() -> None:
    assert set(SHAPES) <= set(MODELS.names())


def test_cnn_refuses_sequences() -> None:
    with pytest.raises(ScenarioError, match=r"model.name: 'cnn' needs image data"):
        build_model("cnn", {}, (40,), 10)


def test_bad_params_name_model_params() -> None:
    with pytest.raises(ScenarioError, match=r"model\.params"):
        build_model("mlp", {"depth": 3}, (4,), 2)


def test_user_models_by_decorator_and_import_path() -> None:
    @register_model("test-linear")
    def linear(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], num_classes))

    assert isinstance(build_model("test-linear", {}, (4,), 2), nn.Sequential)
    imported = build_model("fedsim.models.mlp:mlp", {"hidden": [3]}, (4,), 2)
    assert imported[1].out_features == 3


@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_charlm_logits_layout(dropout: float) -> None:
    torch.manual_seed(0)
    model = build_model("charlm", {"hidden": 16, "dropout": dropout}, (12,), 80)
    x = torch.randint(0, 80, (3, 12))
    for mode in (model.train, model.eval):
        mode()
        out = model(x)
        assert out.shape == (3, 80, 12)  # (B, V, T) for cross-entropy against (B, T)
    torch.nn.functional.cross_entropy(out, x).backward()


def test_charlm_gathered_decoder_equals_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the same masks, the decoder on kept columns gives the dense decoder's logits."""
    from fedsim.kernels import GATHER_RULES, GatherRule, gathered_linear
    from fedsim.models import charlm

    # A 16-unit model gathers only under a rule without the CPU's width threshold.
    monkeypatch.setitem(GATHER_RULES, "cpu", GatherRule(GATHER_RULES["cpu"].min_batch, 0.4))
    calls: list[int] = []

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return gathered_linear(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(charlm, "gathered_linear", spy)
    torch.manual_seed(1)
    model = build_model("charlm", {"hidden": 16, "dropout": 0.5}, (9,), 80).train()
    x = torch.randint(0, 80, (GATHER_RULES["cpu"].min_batch, 9))
    gathered = model(x)
    masks, input_mask = model.lstm.last_masks, model.lstm.last_input_mask
    out, _ = model.lstm(model.emb(x), masks=masks, input_mask=input_mask)
    dense = model.dec(out).permute(0, 2, 1)
    assert calls  # the decoder did gather
    torch.testing.assert_close(gathered, dense, rtol=1e-5, atol=1e-5)


def test_femnist_cnn_has_leafs_layer_sizes() -> None:
    """LEAF: 5x5x1x32 + 32, 5x5x32x64 + 64, 3136x2048 + 2048, 2048x62 + 62 parameters."""
    model = build_model("femnist-cnn", {}, (1, 28, 28), 62)
    expected = (5 * 5 * 32 + 32) + (5 * 5 * 32 * 64 + 64) + (3136 * 2048 + 2048) + (2048 * 62 + 62)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_resnet_gn_has_no_batch_statistics_and_refuses_flat_input() -> None:
    model = build_model("resnet-gn", {"blocks_per_stage": 3}, (3, 32, 32), 10)  # ResNet-20
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert sum(isinstance(m, nn.GroupNorm) for m in model.modules()) == 19 + 2  # + projections
    with pytest.raises(ScenarioError, match=r"model\.name: 'resnet-gn' needs image data"):
        build_model("resnet-gn", {}, (40,), 10)


def test_model_listing_states_input_shapes() -> None:
    help_text = dict(MODELS.describe())
    assert "Input: (1, 28, 28)" in help_text["femnist-cnn"]
    assert "Input: (C, H, W)" in help_text["resnet-gn"]
