"""Models, data and model specs (`--model`), as a user meets them.

Nothing here trains a zoo model for real (that is cached and takes minutes); the zoo
architectures run with their seeded initial weights, and the cache logic is exercised
on a tiny stand-in entry.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeprune.errors import ModelError
from edgeprune.models import zoo
from edgeprune.models.data import digits_images, digits_sequences, load_npz_data, recsys_synthetic
from edgeprune.models.spec import load_model
from edgeprune.models.train import TrainConfig, evaluate, train

ZOO_NAMES = {"digits-cnn", "digits-resnet", "resnet18", "mobilenetv2", "lstm-digits", "gru-digits", "mlp-recsys",
             "dlrm-recsys"}


def count_macs(module: torch.nn.Module, inputs: list[np.ndarray]) -> int:
    """Multiply-accumulates of Conv2d/Linear layers in one forward pass."""
    total = 0

    def hook(m, args, out):
        nonlocal total
        if isinstance(m, torch.nn.Conv2d):
            total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            total += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        module(*[torch.from_numpy(x) for x in inputs])
    for h in handles:
        h.remove()
    return total


# --------------------------------------------------------------------------- data


def test_digits_are_the_real_sklearn_digits_upsampled_to_32x32():
    data = digits_images()
    assert len(data.train) + len(data.val) == 1797  # scikit-learn's bundled set, nothing downloaded
    assert len(data.val) == 360  # stratified 80/20
    x = data.train.inputs[0]
    assert x.shape == (1437, 1, 32, 32) and x.dtype == np.float32
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-3  # standardised on the train split
    assert set(np.unique(data.val.labels)) == set(range(10))
    assert data.task == "classification" and not data.synthetic


def test_digits_sequences_are_the_same_images_read_row_by_row():
    seq, img = digits_sequences(), digits_images()
    assert seq.train.inputs[0].shape == (1437, 32, 32)  # [N, 32 steps, 32 features]
    np.testing.assert_array_equal(seq.val.inputs[0], img.val.inputs[0][:, 0])


def test_digits_data_as_64x64_rgb_round_trips_through_a_user_npz(tmp_path):
    from edgeprune.models.data import save_npz_data

    rgb, grey = digits_images(size=64, channels=3), digits_images(size=64)
    assert rgb.train.inputs[0].shape == (1437, 3, 64, 64) and rgb.train.inputs[0].dtype == np.float32
    for c in range(3):  # the same real scans in three identical planes, said so
        np.testing.assert_array_equal(rgb.val.inputs[0][:, c], grey.val.inputs[0][:, 0])
    assert "3 identical channels" in rgb.description and not rgb.synthetic
    back = load_npz_data(save_npz_data(rgb, tmp_path / "digits64.npz"))  # what a user passes with --data
    np.testing.assert_array_equal(back.train.inputs[0], rgb.train.inputs[0])
    np.testing.assert_array_equal(back.val.labels, rgb.val.labels)
    assert back.task == "classification"
    with pytest.raises(ModelError, match="at least 1 channel"):
        digits_images(channels=0)


def test_recsys_data_is_flagged_synthetic():
    data = recsys_synthetic(n_samples=20_000)
    assert data.synthetic and "SYNTHETIC" in data.description and data.task == "binary"
    users, items = data.train.inputs
    assert users.dtype == np.int64 and items.dtype == np.int64
    assert users.max() < 2000 and items.max() < 1000
    assert 0.45 < data.train.labels.mean() < 0.55  # "liked" = above the median
    assert len(data.val) % 256 == 0  # every validation request fits a deployment batch


def test_user_npz_data_is_checked(tmp_path):
    good = tmp_path / "d.npz"
    np.savez(good, x_train=np.zeros((4, 3)), y_train=[0, 1, 2, 1], x_val=np.zeros((2, 3)), y_val=[1, 0])
    data = load_npz_data(good)
    assert data.task == "classification" and data.train.inputs[0].dtype == np.float32

    missing = tmp_path / "m.npz"
    np.savez(missing, x_train=np.zeros((4, 3)), y_train=[0, 1, 2, 1])
    with pytest.raises(ModelError, match="lacks x_val, y_val"):
        load_npz_data(missing)

    mismatch = tmp_path / "s.npz"
    np.savez(mismatch, x_train=np.zeros((4, 3)), y_train=[0, 1], x_val=np.zeros((2, 3)), y_val=[1, 0])
    with pytest.raises(ModelError, match="x_train has 4 samples but y_train has 2"):
        load_npz_data(mismatch)

    with pytest.raises(ModelError, match="binary"):
        load_npz_data(good, task="binary")  # label 2 is not 0/1


# ---------------------------------------------------------------------------- zoo


def test_zoo_lists_every_model():
    names = {name for name, _ in zoo.list_zoo()}
    assert names == ZOO_NAMES
    assert all(desc for _, desc in zoo.list_zoo())


def test_unknown_zoo_name_lists_the_valid_ones():
    with pytest.raises(ModelError, match="unknown zoo model 'resnet19'.*digits-cnn.*resnet18"):
        load_model("zoo:resnet19")


@pytest.mark.parametrize("name", sorted(ZOO_NAMES))
def test_zoo_architecture_runs_at_its_deployment_shape(name):
    model = zoo.load_zoo(name, trained=False)  # seeded initial weights: no training in tests
    assert model.spec == f"zoo:{name}" and model.module is not None and not model.module.training
    with torch.no_grad():
        out = model.module(*[torch.from_numpy(x) for x in model.example_inputs])
    classes = {"resnet18": 1000, "mobilenetv2": 1000, "mlp-recsys": 1, "dlrm-recsys": 1}.get(name, 10)
    assert tuple(out.shape) == (model.batch_size, classes)
    assert torch.isfinite(out).all()
    if model.data is None:  # random-weight models: latency work only, outputs still O(1)
        assert any("random weights" in n for n in model.notes)
        assert 1e-3 < float(out.std()) < 1e3
    else:  # example input = real validation data at the deployment batch
        np.testing.assert_array_equal(model.example_inputs[0], model.data.val.inputs[0][: model.batch_size])


def test_deployment_batches_and_input_names():
    cnn = zoo.load_zoo("digits-cnn", trained=False)
    assert cnn.input_shapes == [(1, 1, 32, 32)] and cnn.input_names == ["input"]
    rec = zoo.load_zoo("mlp-recsys", trained=False)
    assert rec.input_shapes == [(256,), (256,)] and rec.input_names == ["user_ids", "item_ids"]
    assert rec.data is not None and rec.data.synthetic


def test_demo_models_are_compute_bound():
    """Tens of M MACs per inference, so pruning changes measurable latency (DESIGN.md)."""
    cnn = zoo.load_zoo("digits-cnn", trained=False)
    res = zoo.load_zoo("digits-resnet", trained=False)
    rec = zoo.load_zoo("mlp-recsys", trained=False)
    assert 40e6 < count_macs(cnn.module, cnn.example_inputs) < 80e6
    assert 40e6 < count_macs(res.module, res.example_inputs) < 80e6
    assert 30e6 < count_macs(rec.module, rec.example_inputs) < 80e6  # per batch of 256 requests


def test_zoo_trains_once_then_reuses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path))
    tiny = zoo.ZooEntry(
        name="tiny", description="stand-in", arch_cls="DigitsCNN", arch={"width": 4, "depth": [1, 1]},
        data_fn="digits_images", data_kwargs={"size": 16},
        train={"epochs": 1, "batch_size": 32, "max_samples": 64},
    )
    registry = zoo.Registry("zoo model", ModelError)
    registry.add("tiny", tiny)
    monkeypatch.setattr(zoo, "ZOO", registry)
    logs: list[str] = []

    first = zoo.load_zoo("tiny", log=logs.append)
    path = zoo.cache_path("tiny")
    assert path.is_file() and path.parent == tmp_path / "models"
    assert f"training tiny (first use, cached at {path})" in logs
    assert not list(path.parent.glob("*.tmp"))  # written atomically: no leftovers

    second = zoo.load_zoo("tiny", log=logs.append)
    assert logs[-1] == f"using cached weights {path}"
    for a, b in zip(first.module.state_dict().values(), second.module.state_dict().values()):
        assert torch.equal(a, b)
    assert second.meta["trained"]["val_accuracy"] == first.meta["trained"]["val_accuracy"]

    path.write_bytes(b"truncated")  # a damaged cache is retrained, not trusted
    zoo.load_zoo("tiny", log=logs.append)
    assert any("unusable" in m for m in logs) and logs[-1] != f"using cached weights {path}"


def test_evaluate_scores_every_sample_at_any_batch():
    data = digits_images(size=16)
    model = zoo.ZooEntry(name="t", description="", arch_cls="DigitsCNN", arch={"width": 4, "depth": [1, 1]}).build_module()
    result = train(model, data, TrainConfig(epochs=1, batch_size=32, max_samples=96), progress=False, log=lambda m: None)
    assert 0 <= result.val_accuracy <= 100
    # batch 7 does not divide 360: the last chunk is padded, every sample still counts once
    assert evaluate(model, data.val, "classification", batch_size=7) == pytest.approx(result.val_accuracy)


# -------------------------------------------------------------------- model specs


@pytest.fixture()
def tiny():
    from fixtures_models import tiny_cnn

    return tiny_cnn().eval()


def _onnx(module, path, dynamic_batch: bool):
    torch.onnx.export(
        module, (torch.randn(1, 1, 8, 8),), str(path), input_names=["pixels"], output_names=["logits"],
        opset_version=17, dynamo=False, dynamic_axes={"pixels": {0: "batch"}} if dynamic_batch else None,
    )
    return path


def test_onnx_file_with_static_shape(tmp_path, tiny):
    model = load_model(str(_onnx(tiny, tmp_path / "tiny.onnx", dynamic_batch=False)))
    assert model.module is None and model.onnx_path == (tmp_path / "tiny.onnx").resolve()
    assert model.input_names == ["pixels"] and model.output_names == ["logits"]
    assert model.input_shapes == [(1, 1, 8, 8)] and model.example_inputs[0].dtype == np.float32
    assert any("synthetic" in n for n in model.notes)


def test_onnx_symbolic_batch_needs_an_input_shape(tmp_path, tiny):
    path = _onnx(tiny, tmp_path / "dyn.onnx", dynamic_batch=True)
    with pytest.raises(ModelError, match=r"'pixels' has unknown dims \['batch'\].*--input-shape"):
        load_model(str(path))
    model = load_model(str(path), input_shape=[(4, 1, 8, 8)])
    assert model.batch_size == 4
    with pytest.raises(ModelError, match="does not fit"):
        load_model(str(path), input_shape=[(4, 3, 8, 8)])


def test_torchscript_file(tmp_path, tiny):
    path = tmp_path / "tiny.ts"
    torch.jit.script(tiny).save(str(path))
    model = load_model(str(path), input_shape=[(2, 1, 8, 8)])
    assert isinstance(model.module, torch.jit.ScriptModule) and model.batch_size == 2
    assert model.input_names == ["x"]  # from forward's signature


def test_missing_input_shape_is_explained(tmp_path):
    with pytest.raises(ModelError, match="input shape of fixtures_models:no_shape is unknown.*--input-shape"):
        load_model("fixtures_models:no_shape")
    model = load_model("fixtures_models:no_shape", input_shape=[(5, 6)])
    assert model.input_shapes == [(5, 6)]
    with pytest.raises(ModelError, match="fails on example input of shape 5x7"):
        load_model("fixtures_models:no_shape", input_shape=[(5, 7)])


def test_exported_program_file(tmp_path, tiny):
    path = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(tiny, (torch.randn(3, 1, 8, 8),)), str(path))
    model = load_model(str(path))
    assert model.input_shapes == [(3, 1, 8, 8)]  # the sample input saved with the program
    ref = tiny(torch.from_numpy(model.example_inputs[0]))
    with torch.no_grad():
        got = model.module.eval()(torch.from_numpy(model.example_inputs[0]))  # eval() is accepted
    torch.testing.assert_close(got, ref)


def test_factory_with_weights(tmp_path, tiny):
    with torch.no_grad():
        tiny.fc.bias.fill_(0.5)
    weights = tmp_path / "w.pt"
    torch.save(tiny.state_dict(), weights)
    model = load_model("fixtures_models:tiny_cnn", weights=weights)
    assert model.input_shapes == [(1, 1, 8, 8)]  # declared by the module (example_input_shape)
    assert torch.equal(model.module.fc.bias, torch.full((10,), 0.5))
    assert not model.module.training

    from fixtures_models import NoShape

    other = tmp_path / "other.pt"
    torch.save(NoShape().state_dict(), other)
    with pytest.raises(ModelError, match="do not fit.*missing keys conv.weight"):
        load_model("fixtures_models:tiny_cnn", weights=other)


def test_factory_errors_name_the_problem():
    with pytest.raises(ModelError, match="cannot import module 'no_such_pkg.nets'"):
        load_model("no_such_pkg.nets:build")
    with pytest.raises(ModelError, match="has no attribute 'nope'"):
        load_model("fixtures_models:nope")
    with pytest.raises(ModelError, match="returned a str, not a torch.nn.Module"):
        load_model("fixtures_models:not_a_module")


def test_pickled_module_is_refused_unless_allowed(tmp_path, tiny):
    path = tmp_path / "whole.pt"
    torch.save(tiny, path)
    with pytest.raises(ModelError, match="executes arbitrary code") as err:
        load_model(str(path))
    assert "--allow-pickle" in str(err.value) and "TorchScript" in str(err.value)
    model = load_model(str(path), allow_pickle=True)
    assert type(model.module).__name__ == "TinyCNN"


def test_state_dict_given_as_model_points_to_factory_and_weights(tmp_path, tiny):
    path = tmp_path / "sd.pt"
    torch.save(tiny.state_dict(), path)
    with pytest.raises(ModelError, match="holds only weights.*--weights"):
        load_model(str(path))


@pytest.mark.parametrize("suffix", [".onnx", ".pt", ".pt2"])
def test_corrupt_and_missing_files(tmp_path, suffix):
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(b"\x00not a model at all")
    with pytest.raises(ModelError, match=f"bad{suffix}"):
        load_model(str(bad))
    with pytest.raises(ModelError, match="does not exist"):
        load_model(str(tmp_path / f"missing{suffix}"))


def test_nonsense_spec():
    with pytest.raises(ModelError, match="cannot interpret model spec"):
        load_model("just some words")


def test_user_data_overrides_the_model_data(tmp_path, tiny):
    rng = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    np.savez(path, x_train=rng.normal(size=(6, 1, 8, 8)), y_train=np.arange(6) % 3,
             x_val=rng.normal(size=(4, 1, 8, 8)), y_val=np.arange(4) % 3)
    model = load_model("fixtures_models:tiny_cnn", data=path)
    assert model.data is not None and len(model.data.val) == 4
    np.testing.assert_array_equal(model.example_inputs[0], model.data.val.inputs[0][:1])
    assert not any("synthetic" in n for n in model.notes)
    onnx_model = load_model(str(_onnx(tiny, tmp_path / "t.onnx", dynamic_batch=False)), data=path)
    assert onnx_model.data is not None and onnx_model.example_inputs[0].dtype == np.float32

    flat = tmp_path / "flat.npz"
    np.savez(flat, x_train=np.zeros((2, 64)), y_train=[0, 1], x_val=np.zeros((2, 64)), y_val=[0, 1])
    with pytest.raises(ModelError, match=r"samples have shape \(64,\) but fixtures_models:tiny_cnn takes \(1, 8, 8\)"):
        load_model("fixtures_models:tiny_cnn", data=flat)


def test_zoo_input_shape_may_only_change_the_batch():
    with pytest.raises(ModelError, match="may only change the batch"):
        load_model("zoo:mobilenetv2", input_shape=[(1, 3, 96, 96)])
    assert load_model("zoo:mobilenetv2", input_shape=[(2, 3, 224, 224)]).batch_size == 2
