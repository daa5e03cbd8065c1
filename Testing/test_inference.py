"""Volume inference and checkpoints: batching and padding, progress and cancel, save -> load, sha256, no pickle."""

from __future__ import annotations

import json
import pickle
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from small_models import SMALL

from ctqa.errors import InputError
from ctqa.models import checkpoints, registry
from ctqa.models.inference import (
    Cancelled,
    Prediction,
    learned_noise_level,
    predict_volume,
    resolve_device,
)
from ctqa.models.networks import DOSE_LEVELS, VARIANTS, build_network, network_input

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture
def model():
    """SMALL network in eval mode with non-trivial BatchNorm statistics (so that folding them is exercised)."""
    torch.manual_seed(0)
    network = build_network(SMALL)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 2.0)
    return network.eval()


@pytest.fixture
def volume() -> np.ndarray:
    """(5, 70, 90) float32 HU: air around a 40 HU body with noise rising slice by slice; sizes not multiples of 8."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:70, :90]
    body = ((yy - 35) / 30.0) ** 2 + ((xx - 45) / 40.0) ** 2 < 1
    clean = np.where(body, 40.0, -1000.0)
    sd = np.array([5.0, 10.0, 20.0, 40.0, 80.0])[:, None, None]
    return (clean + sd * rng.standard_normal((5, 70, 90))).astype(np.float32)


def reference_slice(model, hu_slice: np.ndarray):
    """The unfolded model on one slice, padded (reflect) by hand: (quality (windows, y, x), probabilities (6,),
    ln dose)."""
    height, width = hu_slice.shape
    x = network_input(torch.from_numpy(hu_slice)[None, None], model.config.inputs, model.config.windows)
    x = F.pad(x, (0, -width % model.config.required_multiple, 0, -height % model.config.required_multiple), "reflect")
    with torch.inference_mode():
        out = model(x)
    return out.quality[0, :, :height, :width].numpy(), torch.softmax(out.dose_logits[0], 0).numpy(), float(out.log_dose)


def test_volume_inference_equals_slice_by_slice(model, volume):
    whole = predict_volume(model, volume, batch_size=5, device="cpu")
    single = predict_volume(model, volume, batch_size=1, device="cpu")
    assert list(whole.maps) == ["soft_tissue", "lung"]
    assert all(m.shape == volume.shape and m.dtype == np.float32 for m in whole.maps.values())
    assert whole.dose_probabilities.shape == (5, len(DOSE_LEVELS)) and whole.log_dose.shape == (5,)
    assert whole.device_used == "cpu" and whole.precision == "float32" and whole.fallback is None
    for window in whole.maps:
        np.testing.assert_allclose(whole.maps[window], single.maps[window], rtol=0, atol=1e-5)
    np.testing.assert_allclose(whole.dose_probabilities, single.dose_probabilities, rtol=0, atol=1e-5)
    np.testing.assert_allclose(whole.log_dose, single.log_dose, rtol=0, atol=1e-5)
    for index in range(volume.shape[0]):
        quality, probabilities, log_dose = reference_slice(model, volume[index])
        for channel, window in enumerate(whole.maps):
            np.testing.assert_allclose(whole.maps[window][index], quality[channel], rtol=0, atol=1e-5)
        np.testing.assert_allclose(whole.dose_probabilities[index], probabilities, rtol=0, atol=1e-5)
        assert whole.log_dose[index] == pytest.approx(log_dose, abs=1e-5)
    assert all(0.0 <= m.min() and m.max() <= 1.0 for m in whole.maps.values())
    np.testing.assert_allclose(whole.dose_probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert model.training is False and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_model_without_dose_head(volume):
    model = build_network(VARIANTS["RED-CNN"]).eval()
    prediction = predict_volume(model, volume, batch_size=2, device="cpu")
    assert prediction.maps["lung"].shape == volume.shape
    assert prediction.dose_probabilities is None and prediction.log_dose is None
    assert learned_noise_level(prediction) is None


def test_progress_per_batch_and_cancel(model, volume):
    reports = []
    predict_volume(model, volume, batch_size=2, device="cpu", progress=lambda f, m: reports.append((f, m)))
    assert [fraction for fraction, _ in reports] == pytest.approx([2 / 5, 4 / 5, 1.0])
    assert "learned quality map" in reports[-1][1]

    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        predict_volume(model, volume, device="cpu", cancel=cancel)
    cancel.clear()
    seen = []

    def cancel_after_first_batch(fraction: float, message: str) -> None:
        seen.append(fraction)
        cancel.set()

    with pytest.raises(Cancelled):
        predict_volume(model, volume, batch_size=2, device="cpu", progress=cancel_after_first_batch, cancel=cancel)
    assert seen == [pytest.approx(2 / 5)]


def test_devices():
    assert resolve_device("cpu") == (torch.device("cpu"), None)
    assert resolve_device("auto")[0].type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("abacus")
    if not torch.cuda.is_available():
        device, reason = resolve_device("cuda")
        assert device == torch.device("cpu") and "CUDA is not available" in reason


def test_learned_noise_level_averages_body_slices():
    probabilities = np.full((4, len(DOSE_LEVELS)), 1 / len(DOSE_LEVELS), dtype=np.float32)
    log_dose = np.log(np.array([0.2, 0.3, 0.45, 1.0], dtype=np.float32))
    body = np.array([True, True, True, False])  # the last slice is air only, left out
    prediction = Prediction(np.zeros((4, 2, 2), np.float32), probabilities, log_dose, body, "cpu")
    level = learned_noise_level(prediction)
    # noise SD scales as 1/sqrt(dose): the geometric-mean dose-equivalent 0.2*0.3*0.45 gives its inverse square root
    assert level.relative_noise == pytest.approx((0.2 * 0.3 * 0.45) ** (-1 / 6), rel=1e-5)
    assert level.slices_used == 3 and "not a dose" in level.definition
    no_body = Prediction(prediction.maps, probabilities, log_dose, np.zeros(4, bool), "cpu")
    assert learned_noise_level(no_body) is None  # air only: no figure rather than one from nothing


def test_body_slices(model, volume):
    volume = volume.copy()
    volume[1] = -1000.0
    assert predict_volume(model, volume, device="cpu").body_slices.tolist() == [True, False, True, True, True]


# ---- checkpoints ----


@pytest.fixture
def no_pickle(monkeypatch):
    """Make every pickle-based loader fail: checkpoint loading must never need one."""

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle-based loading was called")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(module, name, forbidden)


@pytest.fixture
def no_bundled_models(monkeypatch, tmp_path):
    """Point the bundled-model folder at an empty one."""
    monkeypatch.setattr(registry, "MODELS_DIR", tmp_path / "Models")


def test_save_then_load_gives_identical_outputs(model, tmp_path, no_pickle, no_bundled_models):
    card_path = checkpoints.save(model, SMALL, {"training": {"steps": 0}, "name": "test"}, tmp_path / "small")
    assert card_path == tmp_path / "small.json" and (tmp_path / "small.safetensors").is_file()
    card = json.loads(card_path.read_text())
    assert card["architecture"] == SMALL.to_dict() and card["dose_levels"] == list(DOSE_LEVELS)
    assert card["format_version"] == 2 and card["architecture"]["windows"] == ["soft_tissue", "lung"]
    assert card["input"]["windows_hu"] == {"soft_tissue": [-160.0, 240.0], "lung": [-1350.0, 150.0]}
    assert card["input"]["hpf_scale"] == {"soft_tissue": 10.0, "lung": 37.5} and card["input"]["hpf_sigma_px"] == 1.0
    assert card["training"] == {"steps": 0} and card["metrics"] == {} and card["name"] == "test"
    assert len(card["weights_sha256"]) == 64
    x = network_input(40.0 + 20.0 * torch.randn(2, 1, 32, 40), SMALL.inputs, SMALL.windows)
    for path in (tmp_path / "small", card_path, tmp_path / "small.safetensors"):
        loaded, loaded_card = checkpoints.load(path)
        assert loaded_card == card and not loaded.training and loaded.config == SMALL
        with torch.inference_mode():
            for a, b in zip(model(x), loaded(x)):
                assert torch.equal(a, b)


def test_tampered_or_missing_weights_are_clear_errors(model, tmp_path, no_pickle, no_bundled_models):
    card_path = checkpoints.save(model, SMALL, {}, tmp_path / "small")
    weights = tmp_path / "small.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"small\.safetensors: sha256 .* does not match small\.json") as error:
        checkpoints.load(card_path)
    assert "\n" not in str(error.value)
    weights.unlink()
    with pytest.raises(InputError, match=r"small\.safetensors: weights file not found"):
        checkpoints.load(card_path)
    with pytest.raises(InputError, match=r"nothing\.json: model card not found"):
        checkpoints.load(tmp_path / "nothing")
    card_path.write_text("{not json")
    with pytest.raises(InputError, match=r"small\.json: cannot read model card"):
        checkpoints.load(card_path)


def test_card_that_does_not_fit_the_weights(model, tmp_path, no_bundled_models):
    card_path = checkpoints.save(model, SMALL, {}, tmp_path / "small")
    card = json.loads(card_path.read_text())
    card["architecture"]["features"] = [8, 16, 32]
    card_path.write_text(json.dumps(card))
    with pytest.raises(InputError, match="do not fit the card's architecture"):
        checkpoints.load(card_path)
    card["architecture"]["features"] = SMALL.to_dict()["features"]
    card["input"]["windows_hu"]["lung"] = [-1000, 1000]
    card_path.write_text(json.dumps(card))
    with pytest.raises(InputError, match="windows_hu"):
        checkpoints.load(card_path)
    card["format_version"] = 3
    card_path.write_text(json.dumps(card))
    with pytest.raises(InputError, match="unsupported model card format_version 3"):
        checkpoints.load(card_path)


def test_single_window_cards_of_format_1_still_load(tmp_path, no_bundled_models):
    """Cards made before the lung window (format 1: no "windows", one "window_hu") load as soft-tissue-only models."""
    single = SMALL.__class__(**{**SMALL.to_dict(), "windows": ["soft_tissue"]})
    torch.manual_seed(1)
    network = build_network(single).eval()
    card_path = checkpoints.save(network, single, {}, tmp_path / "old")
    card = json.loads(card_path.read_text())
    del card["architecture"]["windows"]
    card["format_version"] = 1
    card["input"] = {"window_hu": [-160.0, 240.0], "hpf_sigma_px": 1.0, "hpf_scale": 10.0, "normalisation": "..."}
    card_path.write_text(json.dumps(card))
    loaded, _ = checkpoints.load(card_path)
    assert loaded.config.windows == ("soft_tissue",)
    hu = (40.0 + 20.0 * np.random.default_rng(0).standard_normal((2, 32, 40))).astype(np.float32)
    prediction = predict_volume(loaded, hu, device="cpu")
    assert list(prediction.maps) == ["soft_tissue"]
    np.testing.assert_array_equal(
        prediction.maps["soft_tissue"], predict_volume(network, hu, device="cpu").maps["soft_tissue"]
    )
    card["input"]["window_hu"] = [-1000.0, 1000.0]
    card_path.write_text(json.dumps(card))
    with pytest.raises(InputError, match="windows_hu"):
        checkpoints.load(card_path)


def test_bundled_models_and_manifest_sha256(model, tmp_path, monkeypatch, no_pickle):
    models_dir = tmp_path / "Models"
    monkeypatch.setattr(registry, "MODELS_DIR", models_dir)
    assert registry.bundled_models("quality_map") == {}
    assert registry.resolve("quality_map", "default").name == "median_ssim"  # nothing bundled: the first built-in
    with pytest.raises(InputError, match="no global_score model is installed"):
        registry.resolve("global_score", "default")
    card_path = checkpoints.save(model, SMALL, {}, models_dir / "n2q-small")
    sha256 = json.loads(card_path.read_text())["weights_sha256"]
    entry = {"task": "quality_map", "weights": "n2q-small.safetensors", "card": "n2q-small.json", "sha256": sha256}
    manifest = {"defaults": {"quality_map": "n2q-small"}, "models": {"n2q-small": entry}}
    (models_dir / "manifest.json").write_text(json.dumps(manifest))
    assert registry.bundled_models("quality_map") == {"n2q-small": card_path}
    assert registry.bundled_models("denoise") == {}
    spec = registry.resolve("quality_map", "default")
    assert spec.card_path == card_path and spec.bundled and spec.is_learned
    assert spec.task.score_range == (0.0, 1.0) and spec.task.higher_is_better
    assert registry.resolve("quality_map", models_dir / "n2q-small.safetensors").card_path == card_path
    with pytest.raises(InputError, match="a quality_map model, not a denoise model"):
        registry.resolve("denoise", card_path)
    checkpoints.load(spec.card_path)
    manifest["models"]["n2q-small"]["sha256"] = "0" * 64
    (models_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"n2q-small\.safetensors: sha256 .* does not match manifest\.json"):
        checkpoints.load(card_path)
    (models_dir / "manifest.json").write_text(json.dumps({"models": {"x": {"card": "x.json"}}}))
    with pytest.raises(InputError, match="manifest.json: model manifest needs"):
        registry.bundled_models("quality_map")
