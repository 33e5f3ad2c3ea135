"""Checkpoints: every file a load reads is validated (dissectjax/checkpoint.py).

Hostile checkpoints are copies of the committed one (never the committed files), damaged in
one way each: config.json (JSON, keys, model, arguments, input shape, checksums) and
state/ (missing, truncated, garbled files; arrays that are not the model's; bytes that no
longer match their checksums; NaN/Inf). Library cases call ``load_checkpoint``; CLI cases
run the real command line in a subprocess: status 2, one line on stderr, no traceback, no
output written.
"""

import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from dissectjax.checkpoint import (
    add_checksums,
    array_paths,
    bundled_checkpoints,
    check_image_shape,
    checksums,
    demo_checkpoint,
    init_variables,
    load_checkpoint,
    read_config,
    save_checkpoint,
)
from dissectjax.errors import DissectError
from dissectjax.models import build_model

STRONG = [os.path.join(bundled_checkpoints(), name) for name in ("scenenet-strong", "scenenet-strong-seed1")]
COMMITTED = sorted(os.path.join(bundled_checkpoints(), name) for name in os.listdir(bundled_checkpoints()))


WEAK = os.path.join(bundled_checkpoints(), "scenenet")  # the damage cases were written against its files


def copy(tmp_path, name="ckpt"):
    return shutil.copytree(WEAK, tmp_path / name)


def edit_config(path, change):
    config = json.loads((path / "config.json").read_text())
    change(config)
    (path / "config.json").write_text(json.dumps(config))


def data_files(path):
    """The files under state/ holding array data (orbax's OCDBT data files), largest first."""
    files = [p for p in (path / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    return sorted(files, key=lambda p: -p.stat().st_size)


def overwrite(file, offset, n, seed=0):
    data = bytearray(file.read_bytes())
    data[offset : offset + n] = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    file.write_bytes(bytes(data))


def file_digests(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def run_cli(*argv):
    p = subprocess.run([sys.executable, "-m", "dissectjax", *map(str, argv)], capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    return p.returncode, p.stdout, p.stderr


def assert_one_line_error(code, stderr, command, *fragments):
    lines = stderr.strip().splitlines()
    assert code == 2, stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert lines[0].startswith(f"dissectjax {command}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ---- the committed checkpoints and checksums -------------------------------------------------------
@pytest.mark.parametrize("path", COMMITTED, ids=os.path.basename)
def test_committed_checkpoints_carry_checksums_that_hold(path):
    config = read_config(path)
    _, variables, _ = load_checkpoint(path)
    assert config["checksums"] == checksums(jax.device_get(variables))
    assert set(config["checksums"]) == set(array_paths(variables)) and len(config["checksums"]) == 27
    # the planted-bug instances record what was planted; the others record nothing of it
    planted = config["train_config"]
    name = os.path.basename(path)
    assert ("shortcut" in planted) == name.startswith("scenenet-shortcut")
    assert ("absent" in planted) == name.startswith("scenenet-notree")
    if name.startswith("scenenet-shortcut"):
        assert planted["shortcut"] == {"scene": "playroom", "color": "pink", "with_class": 0.9, "otherwise": 0.02,
                                       "size": 0.25}  # fmt: skip
    if name.startswith("scenenet-notree"):
        assert planted["absent"] == ["tree"]


@pytest.fixture(scope="module")
def validation_scenes():
    from dissectjax.data import synthetic
    from dissectjax.train.scenes import STRONG_SCENE_DATA as data

    return synthetic.generate_classification(data.config(data.val_split))


@pytest.mark.parametrize("path", STRONG, ids=os.path.basename)
def test_strong_checkpoints_reach_their_recorded_accuracy(path, validation_scenes):
    """The strong recipe's instances (experiments/train_scenenet.py --recipe strong): validation
    accuracy recomputed here, at least 0.75, as recorded."""
    from dissectjax.evaluate import accuracy

    model, variables, meta = load_checkpoint(path)
    acc = accuracy(model, variables, *validation_scenes)
    assert acc >= 0.75 and acc == pytest.approx(meta["val_accuracy"], abs=1.5e-3)
    assert meta["recipe"] == "strong" and meta["train_config"]["train_size"] == 24000
    assert meta["history"][-1]["val_accuracy"] == meta["val_accuracy"]


def test_save_records_checksums_and_load_verifies_them(tmp_path):
    model = build_model("scenenet", num_classes=12)
    variables = init_variables(model, (64, 64, 3), seed=1)
    save_checkpoint(str(tmp_path / "c"), "scenenet", {"num_classes": 12}, (64, 64, 3), variables)
    config = read_config(str(tmp_path / "c"))
    assert config["checksums"] == checksums(jax.device_get(variables))
    assert all(v.startswith("sha256:") for v in config["checksums"].values())
    _, restored, _ = load_checkpoint(str(tmp_path / "c"))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(variables), jax.device_get(restored))


def test_a_checkpoint_without_checksums_loads_and_add_checksums_leaves_state_alone(tmp_path):
    path = copy(tmp_path)
    edit_config(path, lambda c: c.pop("checksums"))
    _, legacy, config = load_checkpoint(str(path))
    assert "checksums" not in config
    state_before = file_digests(path / "state")
    sums = add_checksums(str(path))
    assert file_digests(path / "state") == state_before  # arrays byte-identical
    assert sums == read_config(WEAK)["checksums"]
    assert read_config(str(path))["checksums"] == sums
    _, again, _ = load_checkpoint(str(path))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(legacy), jax.device_get(again))


# ---- state/ damaged ------------------------------------------------------------------------------
def test_overwritten_bytes_are_refused_by_their_checksum(tmp_path):
    """2,000 bytes overwritten inside the data: the arrays still decode (wrongly) and, before
    checksums, ``ablate`` printed 0.500 for every class."""
    path = copy(tmp_path)
    big = data_files(path)[0]
    overwrite(big, big.stat().st_size // 3, 2000)
    with pytest.raises(DissectError) as e:
        load_checkpoint(str(path))
    message = str(e.value)
    assert message.startswith(f"checkpoint {path}: array params/")
    assert message.endswith("does not match its checksum: the file is damaged")


def test_without_checksums_nan_weights_are_still_refused(tmp_path):
    model = build_model("scenenet", num_classes=12)
    variables = jax.tree.map(np.array, jax.device_get(init_variables(model, (64, 64, 3))))  # writable copies
    variables["params"]["block3_conv"]["kernel"][0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    save_checkpoint(str(tmp_path / "nan"), "scenenet", {"num_classes": 12}, (64, 64, 3), variables)
    with pytest.raises(DissectError, match=r"array params/block3_conv/kernel holds 3 NaN/Inf values"):
        load_checkpoint(str(tmp_path / "nan"))  # its checksums hold: the values are refused
    edit_config(tmp_path / "nan", lambda c: c.pop("checksums"))
    with pytest.raises(DissectError, match=r"array params/block3_conv/kernel holds 3 NaN/Inf values"):
        load_checkpoint(str(tmp_path / "nan"))


def _truncate(path, keep):
    file = data_files(path)[0]
    file.write_bytes(file.read_bytes()[:keep])


def _remove(path, relative):
    target = path / relative
    shutil.rmtree(target) if target.is_dir() else target.unlink()


@pytest.mark.parametrize(
    "damage, expect",
    [
        (lambda p: _truncate(p, 1000), "state/ is damaged or incomplete (OUT_OF_RANGE"),
        (lambda p: _truncate(p, 0), "state/ is damaged or incomplete (OUT_OF_RANGE"),
        (lambda p: data_files(p)[0].unlink(), "has no data in state/ (a file under state/ is missing or empty)"),
        (lambda p: _remove(p, "state"), "has no state/ directory"),
        (lambda p: _remove(p, "state/_METADATA"), "state/_METADATA is missing"),
        (lambda p: (p / "state" / "_METADATA").write_text('{"tree_metadata": {'), "state/_METADATA is damaged"),
        (lambda p: _remove(p, "state/manifest.ocdbt"), "state/ holds no arrays (state/manifest.ocdbt is missing"),
        (lambda p: overwrite(next((p / "state" / "d").iterdir()), 100, 2000), "Error decoding b-tree node"),
        (lambda p: overwrite(data_files(p)[0], 0, 64), "state/ is damaged (FAILED_PRECONDITION"),  # chunk undecodable
    ],
    ids=[
        "truncated",
        "emptied",
        "data-file-removed",
        "no-state",
        "no-metadata",
        "metadata-garbled",
        "no-manifest",
        "btree-garbled",
        "chunk-garbled",
    ],
)
# when one array cannot be decoded, orbax abandons the other reads' coroutines: collected here, not in a later test
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_missing_truncated_or_garbled_state_files(tmp_path, damage, expect):
    path = copy(tmp_path)
    damage(path)
    with pytest.raises(DissectError) as e:
        load_checkpoint(str(path))
    assert str(e.value).startswith(f"checkpoint {path}") and expect in str(e.value), str(e.value)
    assert "\n" not in str(e.value)
    gc.collect()


# ---- config.json ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "write, expect",
    [
        ('{"model": "scenenet", ', "config.json is not valid JSON"),
        ("\xff\xfe", "config.json is not valid JSON"),
        ("[1, 2]", "config.json holds a JSON list; expected an object"),
        ('{"model_kwargs": {}}', "config.json lacks 'model', 'input_shape'"),
        ('{"model": "scenenet"}', "config.json lacks 'input_shape'"),
        ('{"model": 3, "input_shape": [64, 64, 3]}', "'model' is 3; expected a model name"),
        ('{"model": "scenenet", "input_shape": [64, 64]}', "'input_shape' is [64, 64]; expected [H, W, C]"),
        ('{"model": "scenenet", "input_shape": [64, 0, 3]}', "expected [H, W, C], three positive integers"),
        ('{"model": "scenenet", "input_shape": "64x64x3"}', "expected [H, W, C], three positive integers"),
        ('{"model": "scenenet", "input_shape": [64, 64, 3], "model_kwargs": [12]}', "'model_kwargs' is [12]"),
        ('{"model": "nosuchnet", "input_shape": [64, 64, 3]}', "names the unknown model 'nosuchnet'; available"),
    ],
)
def test_bad_config(tmp_path, write, expect):
    path = copy(tmp_path)
    (path / "config.json").write_bytes(write.encode("latin-1"))
    with pytest.raises(DissectError) as e:
        load_checkpoint(str(path))
    assert str(e.value).startswith(f"checkpoint {path}: config.json") and expect in str(e.value), str(e.value)


def test_config_that_does_not_describe_the_weights(tmp_path):
    path = copy(tmp_path)
    edit_config(path, lambda c: c["model_kwargs"].update(bogus=1))
    with pytest.raises(
        DissectError, match=r"gives scenenet the unknown model_kwargs bogus; scenenet takes .*num_classes"
    ):
        load_checkpoint(str(path))
    edit_config(path, lambda c: c["model_kwargs"].pop("bogus") and c["model_kwargs"].update(num_classes=10))
    with pytest.raises(
        DissectError,
        match=r"array params/classifier/bias is \[12\] in state/, but "
        r"scenenet\(num_classes=10\) on 64x64x3 images needs \[10\]",
    ):
        load_checkpoint(str(path))
    edit_config(path, lambda c: c.update(model="lenet5", model_kwargs={}, input_shape=[32, 32, 1]))
    with pytest.raises(DissectError, match="state/ lacks 10 arrays that lenet5"):
        load_checkpoint(str(path))
    edit_config(
        path,
        lambda c: c.update(
            model="scenenet",
            model_kwargs={"num_classes": 12},
            input_shape=[64, 64, 3],
            checksums={**c["checksums"], "params/extra/kernel": "sha256:" + "0" * 64},
        ),
    )
    with pytest.raises(DissectError, match=r"checksums for arrays state/ does not hold \(params/extra/kernel"):
        load_checkpoint(str(path))
    edit_config(
        path, lambda c: c["checksums"].pop("params/extra/kernel") and c["checksums"].pop("params/block1_bn/bias")
    )
    with pytest.raises(DissectError, match="no checksum for array params/block1_bn/bias"):
        load_checkpoint(str(path))
    edit_config(path, lambda c: c.update(checksums={"params/block1_bn/bias": "md5:abc"}))
    with pytest.raises(DissectError, match="'checksums' must map array paths"):
        load_checkpoint(str(path))


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(DissectError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nowhere"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(DissectError, match="is a file; expected a checkpoint directory"):
        load_checkpoint(str(tmp_path / "file"))
    with pytest.raises(DissectError, match=r"not a dissectjax checkpoint \(no config.json"):
        load_checkpoint(str(tmp_path))


# ---- images the model cannot take ---------------------------------------------------------------
@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    """A checkpoint like the one ``dissectjax specialize`` writes: LeNet-5 on 32 x 32 x 1 digits."""
    path = tmp_path_factory.mktemp("lenet") / "checkpoint"
    save_checkpoint(str(path), "lenet5", {"num_classes": 10}, (32, 32, 1), init_variables(build_model("lenet5"),
                                                                                          (32, 32, 1)))  # fmt: skip
    return path


def test_check_image_shape(lenet):
    model, variables, config = load_checkpoint(str(lenet))
    check_image_shape(str(lenet), model, variables, config, (32, 32, 1))
    check_image_shape(str(lenet), model, variables, config, (32, 32, 3))  # averaged to gray: the same arrays
    with pytest.raises(
        DissectError,
        match=r"lenet5 takes 32x32x1 images and the dataset has 64x64x3 \(array "
        r"params/F5/kernel would be \[2704, 120\], the checkpoint holds \[400, 120\]",
    ):
        check_image_shape(str(lenet), model, variables, config, (64, 64, 3))
    model, variables, config = load_checkpoint(demo_checkpoint())
    check_image_shape(demo_checkpoint(), model, variables, config, (96, 80, 3))  # pools globally: any size


# ---- through the command line --------------------------------------------------------------------
def test_cli_ablate_refuses_a_damaged_checkpoint(tmp_path):
    path = copy(tmp_path)
    big = data_files(path)[0]
    overwrite(big, big.stat().st_size // 3, 2000)
    out = tmp_path / "out"
    code, _, stderr = run_cli("ablate", "--checkpoint", path, "--layer", "conv5", "--units", "1", "--images", "24",
                              "--out", out)  # fmt: skip
    assert_one_line_error(code, stderr, "ablate", f"checkpoint {path}: array params/",
                          "does not match its checksum: the file is damaged")  # fmt: skip
    assert not out.exists()


@pytest.mark.parametrize("case", ["lenet-on-scenes", "bad-json", "bogus-kwargs", "truncated-state", "no-state"])
def test_cli_dissect_refuses_bad_checkpoints(tmp_path, lenet, case):
    path = copy(tmp_path) if case != "lenet-on-scenes" else lenet
    expect = {
        "lenet-on-scenes": "lenet5 takes 32x32x1 images and the dataset has 64x64x3",
        "bad-json": "config.json is not valid JSON",
        "bogus-kwargs": "unknown model_kwargs bogus",
        "truncated-state": "state/ is damaged or incomplete",
        "no-state": "has no state/ directory",
    }[case]
    if case == "bad-json":
        (path / "config.json").write_text('{"model": "scenenet",')
    elif case == "bogus-kwargs":
        edit_config(path, lambda c: c["model_kwargs"].update(bogus=1))
    elif case == "truncated-state":
        _truncate(path, 1000)
    elif case == "no-state":
        shutil.rmtree(path / "state")
    out = tmp_path / "out"
    code, _, stderr = run_cli("dissect", "--dataset", "synthetic:8", "--checkpoint", path, "--layers", "conv1",
                                   "--out", out, "--quiet", "--no-report")  # fmt: skip
    assert_one_line_error(code, stderr, "dissect", f"checkpoint {path}", expect)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".out")]
