"""Weight import: torchvision-layout PyTorch weights give the same logits and activations in Flax.

The parity tests need PyTorch (``.ci/run`` installs the CPU build); without it they are
skipped with that reason. The weights are random, re-drawn He-normal so activations keep
their scale through every layer (PyTorch's default init shrinks them, which would make a
small difference meaningless), and BatchNorm statistics measured on random inputs, then
perturbed.
"""

import json
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest

from dissectjax.checkpoint import load_checkpoint
from dissectjax.cli import main
from dissectjax.convert import PRESETS, Preprocessing, read_safetensors, read_weights, to_variables, unwrap
from dissectjax.errors import DissectError

ARCHS = ("resnet18", "resnet50", "alexnet", "vgg16")
TOLERANCE = 1e-4  # max abs difference, float32


def need_torch():
    return pytest.importorskip("torch", reason="PyTorch is not installed: the converter's parity tests need it")


def torch_model(arch, num_classes=7, seed=0):
    torch = need_torch()
    from torch_models import build, calibrate_batchnorm

    torch.manual_seed(seed)
    model = build(arch, num_classes)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                torch.nn.init.normal_(m.bias, std=0.05)
    calibration = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    return calibrate_batchnorm(model, calibration, seed)


def torch_forward(model, images, prep: Preprocessing):
    """What the PyTorch network computes on uint8 RGB images [B, H, W, 3], preprocessed by hand."""
    torch = need_torch()
    x = images.astype(np.float32) / 255.0
    if prep.bgr:
        x = x[..., ::-1]
    x = (x * prep.value_range - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
    with torch.no_grad():
        logits, acts = model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
    nhwc = lambda a: a.numpy().transpose(0, 2, 3, 1) if a.ndim == 4 else a.numpy()
    return logits.numpy(), {k: nhwc(v) for k, v in acts.items()}


def flax_forward(model, variables, images):
    """Logits and every sown layer, by name (``layer1_0/relu1`` for a layer sown inside a block)."""
    from flax import traverse_util

    logits, state = model.apply(variables, jnp.asarray(images), mutable=["intermediates"])
    return np.asarray(logits), {k: np.asarray(v) for k, v in traverse_util.flatten_dict(state["intermediates"],
                                                                                    sep="/").items()}  # fmt: skip


def state_dict(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}


def images(n=2, size=64, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("arch", ARCHS)
def test_converted_weights_give_pytorchs_logits_and_activations(arch):
    reference = torch_model(arch)
    prep = Preprocessing(input_size=64)
    model, variables = to_variables(arch, state_dict(reference), prep)
    x = images()
    want_logits, want = torch_forward(reference, x, prep)
    got_logits, got = flax_forward(model, variables, x)
    assert set(got) == set(want), (sorted(got), sorted(want))
    for name in want:
        assert got[name].shape == want[name].shape, name
        assert np.abs(want[name]).max() > 0.1, f"{name}: activations too small to test anything"
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=TOLERANCE, err_msg=name)
    np.testing.assert_allclose(got_logits, want_logits, rtol=0, atol=TOLERANCE)
    assert np.abs(want_logits).max() > 0.1


def test_caffe_preprocessing_bgr(tmp_path):
    """A BGR, 0-255, mean-subtracted model sees what it saw in training."""
    reference = torch_model("alexnet", seed=3)
    prep = PRESETS["caffe"]
    model, variables = to_variables("alexnet", state_dict(reference), prep)
    x = images(size=prep.input_size)
    want_logits, _ = torch_forward(reference, x, prep)
    got_logits, _ = flax_forward(model, variables, x)
    np.testing.assert_allclose(got_logits, want_logits, rtol=1e-5, atol=TOLERANCE * np.abs(want_logits).max())
    rgb_logits, _ = flax_forward(*to_variables("alexnet", state_dict(reference), PRESETS["torchvision"]), x)
    assert np.abs(rgb_logits - want_logits).max() > 1e-2  # the preprocessing matters


def test_places365_style_checkpoint_through_the_cli(tmp_path, capsys):
    """{'state_dict': {'module.' + key: ...}, 'epoch': ...}, as the public Places365 releases are."""
    torch = need_torch()
    reference = torch_model("resnet18", num_classes=365)
    wrapped = {"epoch": 90, "arch": "resnet18", "best_prec1": 54.7,
               "state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}  # fmt: skip
    torch.save(wrapped, tmp_path / "resnet18_places365.pth.tar")
    out = tmp_path / "ckpt"
    args = ["convert", "--arch", "resnet18", "--weights", str(tmp_path / "resnet18_places365.pth.tar"),
            "--out", str(out), "--input-size", "64"]  # fmt: skip
    assert main(args) == 0
    model, variables, config = load_checkpoint(str(out))
    assert config["model"] == "resnet18" and config["model_kwargs"]["num_classes"] == 365
    assert config["model_kwargs"]["mean"] == list(PRESETS["torchvision"].mean)
    x = images()
    want_logits, want = torch_forward(reference, x, Preprocessing(input_size=64))
    got_logits, got = flax_forward(model, variables, x)
    np.testing.assert_allclose(got_logits, want_logits, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(got["layer4"], want["layer4"], rtol=0, atol=TOLERANCE)
    assert main(args) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err


def write_safetensors(path, arrays):
    """A minimal .safetensors writer (the format: u64 header length, JSON header, raw data)."""
    header, blobs, offset = {}, [], 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a, np.float32)
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        blobs.append(a.tobytes())
        offset += a.nbytes
    text = json.dumps({"__metadata__": {"format": "pt"}, **header}).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_safetensors_and_npz_need_no_pytorch(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"a.weight": rng.normal(size=(3, 4, 2, 2)).astype(np.float32), "b": np.arange(5, dtype=np.float32)}
    write_safetensors(tmp_path / "w.safetensors", arrays)
    got = read_safetensors(str(tmp_path / "w.safetensors"))
    assert set(got) == set(arrays) and all(np.array_equal(got[k], arrays[k]) for k in arrays)
    np.savez(tmp_path / "w.npz", **{f"module.{k}": v for k, v in arrays.items()})
    got = read_weights(str(tmp_path / "w.npz"))
    assert set(got) == set(arrays)
    (tmp_path / "bad.safetensors").write_bytes(b"\x05")
    with pytest.raises(DissectError, match=r"not a valid \.safetensors"):
        read_safetensors(str(tmp_path / "bad.safetensors"))


def test_safetensors_file_converts_like_the_state_dict(tmp_path):
    reference = torch_model("alexnet", seed=5)
    sd = state_dict(reference)
    write_safetensors(tmp_path / "alexnet.safetensors", sd)
    prep = Preprocessing(input_size=64)
    _, direct = to_variables("alexnet", sd, prep)
    _, from_file = to_variables("alexnet", read_weights(str(tmp_path / "alexnet.safetensors")), prep)
    import jax

    assert jax.tree.all(jax.tree.map(np.array_equal, direct, from_file))


def test_unwrap():
    w = np.zeros(2, np.float32)
    assert set(unwrap({"state_dict": {"module.fc.weight": w, "module.fc.bias": w}, "epoch": 3})) == {
        "fc.weight", "fc.bias"}  # fmt: skip
    with pytest.raises(DissectError, match="no tensors found"):
        unwrap({"epoch": 3})


def test_weights_that_do_not_fit_are_listed():
    sd = state_dict(torch_model("resnet50"))
    with pytest.raises(DissectError) as e:
        to_variables("resnet18", sd, Preprocessing(input_size=64))
    message = str(e.value)
    assert "do not fit resnet18" in message and "keys in the file the model does not use" in message
    assert "layer1.0.conv3.weight" in message and "shape mismatches" in message
    small = state_dict(torch_model("resnet18"))
    del small["layer4.1.bn2.running_var"]
    small["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(DissectError) as e:
        to_variables("resnet18", small, Preprocessing(input_size=64))
    assert "1 keys the model needs that the file lacks: layer4.1.bn2.running_var" in str(e.value)
    assert "1 keys in the file the model does not use: extra.weight" in str(e.value)
    with pytest.raises(DissectError, match="unknown architecture 'resnet152'"):
        to_variables("resnet152", small)


# ---- hostile weight files and flags (one validation layer for every file read) ----------------------
def run_convert(*argv):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "dissectjax", "convert", *map(str, argv)], capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    return p.returncode, p.stderr


def assert_one_line_error(code, stderr, *fragments):
    lines = stderr.strip().splitlines()
    assert code == 2, stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert lines[0].startswith("dissectjax convert: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def small_state():
    rng = np.random.default_rng(0)
    return {"a.weight": rng.normal(size=(3, 4)).astype(np.float32), "b.bias": np.zeros(2, np.float32)}


def test_nan_or_inf_weights_are_refused_by_key(tmp_path):
    state = small_state()
    state["b.bias"][1] = np.nan
    np.savez(tmp_path / "w.npz", **state)
    with pytest.raises(DissectError, match=r"w\.npz: tensor 'b\.bias' holds 1 NaN/Inf values of 2; expected finite"):
        read_weights(str(tmp_path / "w.npz"))
    write_safetensors(tmp_path / "w.safetensors", {**state, "b.bias": np.array([np.inf, 0], np.float32)})
    with pytest.raises(DissectError, match=r"w\.safetensors: tensor 'b\.bias' holds 1 NaN/Inf"):
        read_weights(str(tmp_path / "w.safetensors"))
    with pytest.raises(DissectError, match=r"the state dict: tensor 'b\.bias' holds 1 NaN/Inf"):
        to_variables("alexnet", state)


def safetensors_bytes(header, data=b""):
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def good_safetensors():
    return safetensors_bytes({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, bytes(16))


GARBAGE = {
    # .npz
    "npz-not-a-zip": ("w.npz", lambda: b"this is not a zip archive" * 10, "is not an .npz file (not a zip archive)"),
    "npz-empty": ("w.npz", lambda: b"", "is not an .npz file (empty)"),
    "npz-is-npy": ("w.npz", None, "is a single .npy array, not an .npz archive"),
    "npz-truncated": ("w.npz", None, "as an .npz of tensors: File is not a zip file"),
    "npz-garbled": ("w.npz", None, "as an .npz of tensors"),
    # .safetensors
    "st-short": ("w.safetensors", lambda: b"\x05", "shorter than the 8-byte header length"),
    "st-truncated-header": ("w.safetensors", lambda: good_safetensors()[:20], "header says"),
    "st-header-not-json": ("w.safetensors", lambda: struct.pack("<Q", 4) + b"{{{{", "the header is not JSON"),
    "st-header-a-list": ("w.safetensors", lambda: safetensors_bytes([1, 2]), "the header is a JSON list"),
    "st-truncated-data": ("w.safetensors", lambda: good_safetensors()[:-4], "are not inside the file's 12 data bytes"),
    "st-size-mismatch": (
        "w.safetensors",
        lambda: safetensors_bytes({"a": {"dtype": "F32", "shape": [3, 2], "data_offsets": [0, 16]}}, bytes(16)),
        "which needs 24",
    ),
    "st-bad-shape": (
        "w.safetensors",
        lambda: safetensors_bytes({"a": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 16]}}, bytes(16)),
        "non-negative integers",
    ),
    "st-entry-not-object": ("w.safetensors", lambda: safetensors_bytes({"a": 3}), "expected {'dtype'"),
    # .pth
    "pth-empty": ("w.pth", lambda: b"", "is not a PyTorch file (empty)"),
    "pth-text": ("w.pth", lambda: b"hello world\n", "is not a PyTorch file (it starts with b'hell')"),
    "pth-truncated": ("w.pth", None, "cannot read"),
    "pth-garbled": ("w.pth", None, "cannot read"),
    "pth-a-tensor": ("w.pth", None, "holds a ndarray; expected a state dict"),
}


def write_garbage(tmp_path, case):
    name, make, _ = GARBAGE[case]
    path = tmp_path / name
    if make is not None:
        path.write_bytes(make())
    elif case == "npz-is-npy":
        np.save(tmp_path / "w.npy", np.zeros(3))
        (tmp_path / "w.npy").rename(path)
    elif case.startswith("npz-"):
        np.savez(path, **small_state())
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if case == "npz-truncated" else data[:60] + bytes(40) + data[100:])
    else:
        torch = need_torch()
        if case == "pth-a-tensor":
            torch.save(torch.ones(3), path)
        else:
            torch.save({k: torch.from_numpy(v) for k, v in small_state().items()}, path)
            data = path.read_bytes()
            path.write_bytes(
                data[: len(data) // 2] if case == "pth-truncated" else data[:300] + bytes(200) + data[500:]
            )
    return path


@pytest.mark.parametrize("case", GARBAGE)
def test_garbage_weight_files(tmp_path, case):
    path = write_garbage(tmp_path, case)
    with pytest.raises(DissectError) as e:
        read_weights(str(path))
    message = str(e.value)
    assert str(path) in message and GARBAGE[case][2] in message, message
    assert "\n" not in message


def test_weights_that_are_not_numbers_or_not_a_file(tmp_path):
    state = state_dict(torch_model("alexnet"))
    state["features.0.weight"] = np.full(state["features.0.weight"].shape, "x")
    with pytest.raises(DissectError, match=r"features\.0\.weight: dtype <U1, alexnet needs numbers"):
        to_variables("alexnet", state, Preprocessing(input_size=64))
    with pytest.raises(DissectError, match="is a directory"):
        read_weights(str(tmp_path))


@pytest.mark.parametrize(
    "fields, expect",
    [
        ({"mean": (np.nan, 0.5, 0.5)}, "mean must be three finite numbers"),
        ({"std": (0.2, 0.0, 0.2)}, "std must be positive"),
        ({"std": (0.2, np.inf, 0.2)}, "std must be three finite numbers"),
        ({"value_range": -1.0}, "value_range must be a positive number"),
        ({"input_size": 0}, "input_size must be a positive integer"),
    ],
)
def test_preprocessing_is_checked(fields, expect):
    with pytest.raises(DissectError, match=expect):
        Preprocessing(**fields)


@pytest.mark.parametrize(
    "case, flags, expect",
    [
        ("nan-weights", [], "tensor 'fc.bias' holds 1 NaN/Inf values"),
        ("garbage", [], "is not an .npz file"),
        ("ok", ["--mean", "nan,0.4,0.4"], "--mean takes finite numbers"),
        ("ok", ["--std", "0.2,0,0.2"], "--std takes positive numbers"),
        ("ok", ["--std", "0.2,-1,0.2"], "--std takes positive numbers"),
        ("ok", ["--std", "inf,0.2,0.2"], "--std takes finite numbers"),
        ("ok", ["--value-range", "0"], "--value-range must be a positive number"),
    ],
)
def test_cli_refuses_bad_weights_and_flags(tmp_path, case, flags, expect):
    weights = tmp_path / "w.npz"
    if case == "garbage":
        weights.write_bytes(b"not a zip" * 20)
    else:
        state = state_dict(torch_model("resnet18"))
        if case == "nan-weights":
            state["fc.bias"][2] = np.nan
        np.savez(weights, **state)
    out = tmp_path / "out"
    code, stderr = run_convert("--arch", "resnet18", "--weights", weights, "--out", out, "--input-size", "64", *flags)
    assert_one_line_error(code, stderr, expect)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".ckpt-")]
