"""Checkpoint tests: exact round trips, refusals with one-line messages, official SDNet conversion."""

import builtins
import json
import os
import re

import pytest
import torch
from safetensors.torch import save_file

import robust_csc
from robust_csc import atomic
from robust_csc.csc import csc_layers, get_lambda, set_lambda
from robust_csc.errors import RobustCSCError
from robust_csc.models import create_model
from robust_csc.models.checkpoints import (
    FORMAT_VERSION,
    checkpoint_hash,
    convert_official_checkpoint,
    convert_official_state_dict,
    load_checkpoint,
    load_weights_into,
    read_metadata,
    save_checkpoint,
)

WIDTH = 8


def assert_one_line(exc_info, *fragments):
    message = str(exc_info.value)
    assert "\n" not in message and ". " not in message, message  # one sentence
    for fragment in fragments:
        assert fragment in message, message


def randomized(model, seed=0):
    """Every parameter and BN statistic random, so a missed tensor would change the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                values = torch.rand(tensor.shape, generator=gen) * 0.5
                tensor.copy_(values + 0.5 if name.endswith("running_var") else values - 0.25)
            else:
                tensor.fill_(7)  # num_batches_tracked
    return model.eval()


def images(stem, n=2):
    size = 32 if stem == "cifar" else 64
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def assert_same_tensors(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.fixture
def sdnet18():
    return randomized(create_model("sdnet18", num_classes=10, width=WIDTH))


# ---------------------------------------------------------------- round trip


def test_round_trip_is_exact(tmp_path, sdnet18):
    set_lambda(sdnet18, 0.25)
    path = save_checkpoint(
        tmp_path / "a.safetensors", sdnet18, dataset="cifar10", training={"epoch": 3, "acc": torch.tensor(0.5)}
    )
    assert path == tmp_path / "a.safetensors"
    model, meta = load_checkpoint(path)
    assert not model.training
    assert_same_tensors(sdnet18, model)
    x = images("cifar")
    assert torch.equal(logits(sdnet18, x), logits(model, x))
    assert get_lambda(model) == {"stem.0": 0.25}
    assert meta["format_version"] == FORMAT_VERSION and meta["arch"] == "sdnet18"
    assert meta["num_classes"] == 10 and meta["dataset"] == "cifar10"
    assert meta["arguments"]["width"] == WIDTH and meta["lambda"] == {"stem.0": 0.25}
    assert meta["training"] == {"epoch": 3, "acc": 0.5} and meta["extra"] == {}
    assert meta["torch_version"] == torch.__version__ and meta["robust_csc_version"] == robust_csc.__version__
    assert read_metadata(path) == meta


def test_round_trip_restores_per_layer_lambdas(tmp_path):
    original = randomized(create_model("sdnet18_all", num_classes=10, width=WIDTH, mean=(0.5, 0.5, 0.5)))
    lambdas = {name: 0.05 * (i + 1) for i, name in enumerate(csc_layers(original))}
    set_lambda(original, lambdas)
    model, meta = load_checkpoint(save_checkpoint(tmp_path / "all.safetensors", original))
    assert get_lambda(model) == lambdas and len(set(lambdas.values())) > 10
    assert meta["arguments"]["mean"] == [0.5, 0.5, 0.5]  # tuples are stored as lists
    assert_same_tensors(original, model)
    x = images("cifar")
    assert torch.equal(logits(original, x), logits(model, x))


def test_save_replaces_and_hash_follows_the_weights(tmp_path, sdnet18):
    path = tmp_path / "a.safetensors"
    first = checkpoint_hash(save_checkpoint(path, sdnet18))
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert checkpoint_hash(save_checkpoint(path, sdnet18)) == first  # saving is deterministic
    with torch.no_grad():
        sdnet18.linear.bias[0] += 1.0
    assert checkpoint_hash(save_checkpoint(path, sdnet18)) != first
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]  # no temporary files left


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError(28, "No space left on device")])
def test_failed_save_keeps_the_previous_file(tmp_path, sdnet18, monkeypatch, failure):
    path = save_checkpoint(tmp_path / "a.safetensors", sdnet18)
    before = path.read_bytes()
    with torch.no_grad():
        sdnet18.linear.bias += 1.0

    def fail(fd):  # the new bytes are written to the temporary file, the rename has not happened
        raise failure

    monkeypatch.setattr(atomic.os, "fsync", fail)
    with pytest.raises(KeyboardInterrupt if failure is KeyboardInterrupt else RobustCSCError) as err:
        save_checkpoint(path, sdnet18)
    if failure is not KeyboardInterrupt:
        assert_one_line(err, "could not write", "No space left on device")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


def test_saved_file_has_the_usual_permissions(tmp_path, sdnet18):
    umask = os.umask(0)
    os.umask(umask)
    path = save_checkpoint(tmp_path / "a.safetensors", sdnet18)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # readable by others like any torch.save file


def test_save_refuses_models_it_cannot_rebuild(tmp_path, sdnet18):
    with pytest.raises(RobustCSCError) as err:
        save_checkpoint(tmp_path / "x.safetensors", torch.nn.Linear(2, 2))
    assert_one_line(err, "create_model")
    set_lambda(sdnet18, torch.tensor([0.1, 0.2]))
    with pytest.raises(RobustCSCError) as err:
        save_checkpoint(tmp_path / "x.safetensors", sdnet18)
    assert_one_line(err, "stem.0", "per-sample")
    with pytest.raises(RobustCSCError) as err:
        save_checkpoint(tmp_path / "x.safetensors", create_model("sdnet18", width=WIDTH), extra={"f": open})
    assert_one_line(err, "extra['f']")
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- refusals


def test_truncated_file_is_refused(tmp_path, sdnet18):
    good = save_checkpoint(tmp_path / "good.safetensors", sdnet18)
    data = good.read_bytes()
    for size in (len(data) - 100, 1000, 4):
        cut = tmp_path / "cut.safetensors"
        cut.write_bytes(data[:size])
        for load in (load_checkpoint, read_metadata, lambda p: load_weights_into(sdnet18, p)):
            with pytest.raises(RobustCSCError) as err:
                load(cut)
            assert_one_line(err, "truncated or not a safetensors checkpoint", "re-download or re-save")
    assert good.read_bytes() == data


def test_missing_file_foreign_file_and_newer_format(tmp_path, sdnet18):
    with pytest.raises(RobustCSCError) as err:
        load_checkpoint(tmp_path / "nope.safetensors")
    assert_one_line(err, "no checkpoint at", "nope.safetensors")

    bare = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in sdnet18.state_dict().items()}, str(bare))
    with pytest.raises(RobustCSCError) as err:
        load_checkpoint(bare)
    assert_one_line(err, "no robust_csc metadata", "load_weights_into")
    fresh = create_model("sdnet18", num_classes=10, width=WIDTH)
    assert load_weights_into(fresh, bare) == {}
    assert_same_tensors(sdnet18, fresh)

    meta = json.loads(json.dumps(read_metadata(save_checkpoint(tmp_path / "a.safetensors", sdnet18))))
    meta["format_version"] = FORMAT_VERSION + 1
    newer = tmp_path / "newer.safetensors"
    save_file({"x": torch.zeros(1)}, str(newer), metadata={"robust_csc": json.dumps(meta)})
    with pytest.raises(RobustCSCError) as err:
        load_checkpoint(newer)
    assert_one_line(err, "upgrade robust-csc")


def test_arch_and_class_mismatch_name_both_values(tmp_path, sdnet18):
    path = save_checkpoint(tmp_path / "a.safetensors", sdnet18)
    with pytest.raises(RobustCSCError) as err:
        load_checkpoint(path, expect_arch="resnet18")
    assert_one_line(err, "sdnet18", "resnet18")
    with pytest.raises(RobustCSCError) as err:
        load_checkpoint(path, expect_num_classes=100)
    assert_one_line(err, "10 classes", "100")
    load_checkpoint(path, expect_arch="SDNet18", expect_num_classes=10)


def test_shape_and_key_mismatches_are_listed(tmp_path, sdnet18):
    path = save_checkpoint(tmp_path / "a.safetensors", sdnet18)
    with pytest.raises(RobustCSCError) as err:
        load_weights_into(create_model("sdnet18", num_classes=10, width=16), path)
    assert_one_line(err, "stem.0.weight has shape (8, 3, 3, 3) in the file but (16, 3, 3, 3) in the model")

    with_shortcut = save_checkpoint(tmp_path / "s.safetensors", create_model("sdnet18_all", width=WIDTH))
    with pytest.raises(RobustCSCError) as err:
        load_weights_into(create_model("sdnet18_all", width=WIDTH, shortcut=False), with_shortcut)
    assert_one_line(err, "unexpected key(s) in the file (layer2.0.shortcut.0.weight")
    assert re.search(r"\b(\d+) unexpected", str(err.value)).group(1) == "18"  # 3 downsampling blocks x 6


# ---------------------------------------------------------------- .pt files


def test_plain_pt_state_dict_loads(tmp_path, sdnet18):
    path = tmp_path / "w.pt"
    wrapped = {"model": {f"module.{k}": v for k, v in sdnet18.state_dict().items()}, "epoch": 4}
    torch.save(wrapped, path)
    fresh = create_model("sdnet18", num_classes=10, width=WIDTH)
    assert load_weights_into(fresh, path) == {}
    assert_same_tensors(sdnet18, fresh)
    with pytest.raises(RobustCSCError) as err:
        load_checkpoint(path)
    assert_one_line(err, "load_weights_into")


class Payload:
    """Pickles as a call to exec that writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_pickle_with_code_is_refused_and_not_run(tmp_path, sdnet18):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": sdnet18.state_dict(), "hook": Payload(marker)}, path)
    model = create_model("sdnet18", num_classes=10, width=WIDTH)
    with pytest.raises(RobustCSCError) as err:
        load_weights_into(model, path)
    assert_one_line(err, "contains code that would run on load", "only plain state_dicts are accepted")
    with pytest.raises(RobustCSCError):
        convert_official_checkpoint(path, tmp_path / "out.safetensors", "sdnet18")
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.read_text() == "ran"


def test_damaged_pt_is_refused(tmp_path, sdnet18):
    good = tmp_path / "good.pt"
    torch.save(sdnet18.state_dict(), good)
    damaged = [good.read_bytes()[:300], b"not a checkpoint at all"]
    for seed in range(20):  # random bytes break the unpickler in many different ways
        noise = torch.randint(0, 256, (64,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
        damaged.append(noise.numpy().tobytes())
    path = tmp_path / "junk.pt"
    for data in damaged:
        path.write_bytes(data)
        with pytest.raises(RobustCSCError) as err:
            load_weights_into(sdnet18, path)
        assert_one_line(err, "truncated or not a PyTorch state_dict")


# ---------------------------------------------------------------- official conversion


def to_official(model):
    """Our state_dict in the official SDNet layout, as its training script saved it."""
    csc = set(csc_layers(model))
    all_csc = model.config["arch"].endswith("_all")
    official = {}
    for key, tensor in model.state_dict().items():
        module, leaf = key.rsplit(".", 1)
        if module in csc:
            module += ".dn"
            official[f"{module}.step_size"] = torch.tensor(0.123)
        name = f"{module}.{leaf}"
        if name.startswith("stem."):
            name = "layer0." + name[len("stem.") :]
        elif all_csc and re.match(r"layer[1-4]\.", name):
            layer, rest = name.split(".", 1)
            name = f"{layer}.layers.{rest}"
        official[name] = tensor.clone()
    official["layer0.0.running_c_loss"] = torch.tensor(0.0)
    return {"state_dict": {f"module.{k}": v for k, v in official.items()}, "epoch": 100}


CONVERSIONS = [
    ("sdnet18", "cifar", {}),
    ("sdnet18", "imagenet", {}),
    ("sdnet18_all", "cifar", {}),
    ("sdnet18_all", "cifar", {"shortcut": False}),
    ("sdnet18_all", "imagenet", {}),
    ("sdnet18_all", "imagenet", {"shortcut": False}),
]


@pytest.mark.parametrize("arch, stem, options", CONVERSIONS)
def test_official_conversion_gives_the_same_logits(arch, stem, options):
    original = randomized(create_model(arch, num_classes=7, stem=stem, width=WIDTH, **options))
    official = to_official(original)
    if arch.endswith("_all"):
        assert any(".layers." in k for k in official["state_dict"])
        assert any("shortcut." in k for k in official["state_dict"]) == options.get("shortcut", True)
    converted = convert_official_state_dict(official, arch)  # stem, width, classes, shortcut inferred
    assert not converted.training
    assert converted.config == original.config
    assert_same_tensors(original, converted)
    x = images(stem)
    assert torch.equal(logits(original, x), logits(converted, x))


def test_conversion_refuses_the_wrong_family_and_leftovers():
    official = to_official(randomized(create_model("sdnet18_all", width=WIDTH)))
    with pytest.raises(RobustCSCError) as err:
        convert_official_state_dict(official, "sdnet18")
    assert_one_line(err, "CSC layers", "layer1.0.conv1")
    official["state_dict"]["module.layer1.layers.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(RobustCSCError) as err:
        convert_official_state_dict(official, "sdnet18_all")
    assert_one_line(err, "1 unexpected key(s)", "layer1.0.extra.weight")
    with pytest.raises(RobustCSCError) as err:
        convert_official_state_dict(official, "resnet18")
    assert_one_line(err, "sdnet18_all", "resnet18")


def test_convert_official_checkpoint_file(tmp_path):
    original = randomized(create_model("sdnet18", num_classes=10, width=WIDTH))
    src = tmp_path / "official.pth"
    torch.save(to_official(original), src)
    dst = convert_official_checkpoint(src, tmp_path / "converted.safetensors", "sdnet18", dataset="cifar10")
    model, meta = load_checkpoint(dst, expect_arch="sdnet18", expect_num_classes=10)
    assert meta["dataset"] == "cifar10" and meta["extra"]["source_sha256"] == checkpoint_hash(src)
    x = images("cifar")
    assert torch.equal(logits(original, x), logits(model, x))

    before = dst.read_bytes()
    other = tmp_path / "other.pth"
    torch.save(to_official(randomized(create_model("sdnet18", num_classes=10, width=WIDTH), seed=5)), other)
    with pytest.raises(RobustCSCError) as err:
        convert_official_checkpoint(other, dst, "sdnet18")
    assert_one_line(err, "already exists", "--force")
    assert dst.read_bytes() == before
    convert_official_checkpoint(other, dst, "sdnet18", overwrite=True)
    assert dst.read_bytes() != before
