"""Any classifier as a model: torchvision, timm, RobustBench and user builders; the weights hash; refused input."""

import copy
import hashlib
import importlib.util
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from robust_csc.constants import IMAGENET_MEAN, IMAGENET_STD
from robust_csc.csc import set_lambda
from robust_csc.data.generated import generated_suite
from robust_csc.errors import RobustCSCError
from robust_csc.evaluation.harness import evaluate
from robust_csc.evaluation.store import ResultsStore
from robust_csc.models import create_model
from robust_csc.models.sources import LoadedModel, NormalizedModel, identify, load_model, weights_sha256

pytestmark = pytest.mark.usefixtures("one_thread")

BUILDERS = '''
import torch
from torch import nn

def build(num_classes=10):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

def fixed():
    return build(10)

def not_a_model():
    return "a model"

def broken():
    raise ValueError("needs a GPU")
'''


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    (root / "tiny_net.py").write_text(BUILDERS)
    (root / "syntax_error.py").write_text("def build(:\n")
    return root


def reference_hash(model):
    """The documented weights hash, written out with numpy's bytes (the module uses a uint8 view)."""
    digest = hashlib.sha256(b"robust-csc weights sha256 v1\n")
    entries = {**dict(model.state_dict()), **dict(model.named_buffers())}
    for name in sorted(entries):
        tensor = entries[name].detach().cpu().contiguous()
        data = tensor.numpy().tobytes()
        digest.update(f"{name}\0{tensor.dtype}\0{','.join(map(str, tensor.shape))}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


# ---------------------------------------------------------------- the weights hash


def test_weights_hash_follows_its_documented_format_and_ignores_mode_and_copies():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3))
    net(torch.rand(2, 3, 8, 8))  # materialise the lazy layer
    model = NormalizedModel(net, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    sha = weights_sha256(model)
    assert sha == reference_hash(model)
    assert weights_sha256(copy.deepcopy(model).train()) == sha
    assert weights_sha256(model.eval()) == sha


def test_weights_hash_changes_with_a_weight_the_normalisation_or_a_lambda():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    sha = weights_sha256(NormalizedModel(net, (0.5,), (0.2,)))
    assert weights_sha256(NormalizedModel(net, (0.5,), (0.25,))) != sha  # a non-persistent buffer counts
    other = copy.deepcopy(net)
    with torch.no_grad():
        other[1].weight[0, 0] = torch.nextafter(other[1].weight[0, 0], torch.tensor(2.0))  # one ulp
    assert weights_sha256(NormalizedModel(other, (0.5,), (0.2,))) != sha
    sdnet = create_model("sdnet18", width=4, num_classes=10)
    before = weights_sha256(sdnet)
    set_lambda(sdnet, 0.7)  # lambda is model state outside the state_dict
    assert weights_sha256(sdnet) != before


def test_identify_names_and_hashes_any_module_or_a_loaded_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    module, name, sha = identify(net)
    assert module is net and name == "sequential" and sha == weights_sha256(net)
    assert identify(net, "mine", "f" * 64)[1:] == ("mine", "f" * 64)
    loaded = LoadedModel(net, "loaded", "e" * 64)
    assert identify(loaded) == (net, "loaded", "e" * 64)
    with pytest.raises(RobustCSCError, match="pass a torch nn.Module"):
        identify("resnet18")


def test_a_module_from_python_resumes_in_the_store_by_its_weights_hash(folder, tmp_path):
    loaded = load_model(f"{folder / 'tiny_net.py'}:fixed", num_classes=10)
    suite = generated_suite("digits", corruptions=["contrast"], severities=[5], n_examples=8)
    store = tmp_path / "s.sqlite"
    first = evaluate(loaded.model, suite, store=store, dataset=suite.name)  # no name or hash given
    assert first.cells_run == 1
    with ResultsStore(store) as results:
        frame = results.to_frame()
    assert list(frame["checkpoint_sha256"]) == [loaded.sha256] and list(frame["model"]) == ["sequential"]
    again = evaluate(copy.deepcopy(loaded.model), suite, store=store, dataset=suite.name)
    assert (again.cells_run, again.cells_skipped) == (0, 1)
    named = evaluate(loaded, suite, store=store, dataset=suite.name)  # the LoadedModel's own name
    assert named.cells_run == 1 and set(named.frame["model"]) == {"tiny_net.py:fixed"}


# ---------------------------------------------------------------- torchvision


def test_torchvision_model_takes_local_weights_and_normalises_inside(tmp_path):
    torch.manual_seed(1)
    import torchvision

    reference = torchvision.models.resnet18(num_classes=10).eval()
    torch.save(reference.state_dict(), tmp_path / "r18.pt")
    save_file(reference.state_dict(), str(tmp_path / "r18.safetensors"))
    x = torch.rand(3, 3, 32, 32)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference((x - mean) / std)
    for weights in ("r18.pt", "r18.safetensors"):
        loaded = load_model("torchvision:resnet18", weights=tmp_path / weights, num_classes=10)
        assert loaded.name == "torchvision:resnet18" and loaded.num_classes == 10 and not loaded.model.training
        assert loaded.meta["lambda"] == {} and loaded.meta["normalization"]["mean"] == list(IMAGENET_MEAN)
        with torch.no_grad():
            torch.testing.assert_close(loaded.model(x), expected)
    # the same weights from either file are one model in the store
    assert load_model("torchvision:resnet18", weights=tmp_path / "r18.pt", num_classes=10).sha256 == loaded.sha256
    custom = load_model("torchvision:resnet18", weights=tmp_path / "r18.pt", num_classes=10, mean="0.5,0.5,0.5", std="0.25,0.25,0.25")
    with torch.no_grad():
        torch.testing.assert_close(custom.model(x), reference((x - 0.5) / 0.25))
    assert custom.sha256 != loaded.sha256


def test_unknown_torchvision_name_and_weights_that_do_not_fit(tmp_path):
    with pytest.raises(RobustCSCError, match=r"torchvision has no classification model 'resnet5'; did you mean resnet50"):
        load_model("torchvision:resnet5")
    with pytest.raises(RobustCSCError, match="no classification model 'fasterrcnn_resnet50_fpn'"):
        load_model("torchvision:fasterrcnn_resnet50_fpn")  # a detection model is not a classifier
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(RobustCSCError) as err:
        load_model("torchvision:resnet18", weights=tmp_path / "r18.pt")  # head of 1000 classes
    message = str(err.value)
    assert "fc.weight has shape (10, 512) in the file but (1000, 512) in the model" in message
    assert "--num-classes" in message and "\n" not in message
    with pytest.raises(RobustCSCError, match=r"1 key\(s\) missing from the file \(layer4.1.bn2.weight\)"):
        state = torchvision.models.resnet18(num_classes=10).state_dict()
        del state["layer4.1.bn2.weight"]
        torch.save(state, tmp_path / "partial.pt")
        load_model("torchvision:resnet18", weights=tmp_path / "partial.pt", num_classes=10)


# ---------------------------------------------------------------- user builders


def test_builder_from_a_file_and_from_a_module(folder, tmp_path, monkeypatch):
    net = importlib.util.spec_from_file_location("tiny_reference", folder / "tiny_net.py")
    module = importlib.util.module_from_spec(net)
    net.loader.exec_module(module)
    torch.manual_seed(5)
    trained = module.build(10)
    for p in trained.parameters():
        p.data.normal_()
    save_file(trained.state_dict(), str(tmp_path / "tiny.safetensors"))
    loaded = load_model(f"{folder / 'tiny_net.py'}:build", weights=tmp_path / "tiny.safetensors", num_classes=10)
    assert loaded.name == "tiny_net.py:build" and loaded.meta["normalization"] is None  # normalises itself
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), trained.eval()(x))
    monkeypatch.chdir(folder)  # a module name is found from the working folder, as with python -m
    by_module = load_model("tiny_net:build", weights=tmp_path / "tiny.safetensors", num_classes=10, mean=[0.5] * 3, std=[0.5] * 3)
    assert by_module.name == "tiny_net:build" and isinstance(by_module.model, NormalizedModel)
    with torch.no_grad():
        torch.testing.assert_close(by_module.model(x), trained(2 * x - 1))
    four = load_model("tiny_net.py:build", num_classes=4)  # passed to the builder, which takes num_classes
    assert four.num_classes == 4 and four.model(x).shape == (4, 4)


@pytest.mark.parametrize(
    "reference, options, message",
    [
        ("missing.py:build", {}, "builder file missing.py does not exist"),
        ("syntax_error.py:build", {}, "builder file syntax_error.py does not import (SyntaxError"),
        ("no_such_package.models:build", {}, "builder module no_such_package.models does not import (ModuleNotFoundError"),
        ("tiny_net.py:nothing", {}, "tiny_net.py has no function 'nothing'"),
        ("tiny_net.py:not_a_model", {}, "returned a value of type str, not a torch nn.Module"),
        ("tiny_net.py:broken", {}, "builder tiny_net.py:broken raised ValueError: needs a GPU"),
        ("tiny_net.py:fixed", {}, "the number of classes of tiny_net.py:fixed is not known; pass --num-classes"),
        ("tiny_net.py:build", {"mean": "0.5,0.5"}, "pass both --mean and --std"),
        ("tiny_net.py:build", {"mean": "0.5,x", "std": "1,1"}, "--mean value 'x' is not a number"),
        ("tiny_net.py:build", {"mean": "0.5", "std": "0"}, "has a value <= 0"),
        ("tiny_net.py:build", {"model_dir": "m"}, "--model-dir and --allow-download apply to robustbench"),
        ("resnet18", {}, "is neither a file nor a known reference"),
    ],
)
def test_builder_mistakes_are_one_line_errors(folder, monkeypatch, reference, options, message):
    monkeypatch.chdir(folder)
    with pytest.raises(RobustCSCError) as err:
        load_model(reference, **options)
    assert message in str(err.value) and "\n" not in str(err.value)


def malicious(path: Path, marker: Path, legacy: bool) -> Path:
    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))  # creates the marker file when unpickled

    if legacy:  # a bare pickle (protocol 2, as torch's legacy format), the payload its first global
        with open(path, "wb") as f:
            pickle.dump({"payload": Payload()}, f, protocol=2)
    else:
        torch.save({"0.weight": torch.zeros(8, 3, 3, 3), "payload": Payload()}, path)
    return path


@pytest.mark.parametrize("legacy", [False, True], ids=["torch.save", "pickle.dump"])
def test_a_pickle_that_would_run_code_is_refused_without_running_it(folder, tmp_path, legacy):
    marker = tmp_path / "MARKER"
    evil = malicious(tmp_path / "evil.pt", marker, legacy)
    with pytest.raises(RobustCSCError, match=r"evil.pt contains code that would run on load \((io|builtins)\.open\)"):
        load_model(f"{folder / 'tiny_net.py'}:build", weights=evil, num_classes=10)
    assert not marker.exists()
    # The payload is real: an unsafe load would have run it.
    control = tmp_path / "CONTROL"
    try:
        torch.load(malicious(tmp_path / "control.pt", control, legacy), weights_only=False)
    except Exception:  # a plain pickle is no torch file; the payload has run by then
        pass
    assert control.exists()


def test_checkpoint_files_are_references_too(tmp_path):
    from robust_csc.models.checkpoints import checkpoint_hash, save_checkpoint

    path = save_checkpoint(tmp_path / "m.safetensors", create_model("resnet18", width=4, num_classes=10), dataset="digits")
    loaded = load_model(path)
    assert (loaded.name, loaded.sha256, loaded.dataset) == ("resnet18", checkpoint_hash(path), "digits")
    with pytest.raises(RobustCSCError, match="records its own weights, classes and normalisation; drop --weights"):
        load_model(path, weights=path)


# ---------------------------------------------------------------- timm


def test_timm_model_is_built_without_download_and_normalised_by_its_config(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(2)
    reference = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    torch.save(reference.state_dict(), tmp_path / "t.pt")
    loaded = load_model("timm:resnet18", weights=tmp_path / "t.pt", num_classes=10)
    config = reference.pretrained_cfg
    assert loaded.meta["normalization"] == {"mean": list(config["mean"]), "std": list(config["std"])}
    x = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(config["mean"]).view(1, 3, 1, 1), torch.tensor(config["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), reference((x - mean) / std))
    with pytest.raises(RobustCSCError, match="timm has no model 'resnt18'; did you mean resnet18"):
        load_model("timm:resnt18")


# ---------------------------------------------------------------- RobustBench


@pytest.fixture(scope="module")
def robustbench_dir(tmp_path_factory):
    """A model folder holding a randomly initialised Modas2021PRIMEResNet18 (ResNet-18) where robustbench looks."""
    if importlib.util.find_spec("robustbench") is None:  # not importorskip: robustbench's own __init__ fails here
        pytest.skip("robustbench is not installed")
    from robust_csc.models.robustbench_zoo import import_robustbench

    try:
        zoo = import_robustbench("model_zoo").model_dicts
        enums = import_robustbench("model_zoo.enums")
    except RobustCSCError as err:
        pytest.skip(f"robustbench is not usable here: {err}")
    torch.manual_seed(3)
    net = zoo[enums.BenchmarkDataset("cifar10")][enums.ThreatModel("corruptions")]["Modas2021PRIMEResNet18"]["model"]()
    root = tmp_path_factory.mktemp("models")
    (root / "cifar10" / "corruptions").mkdir(parents=True)
    torch.save(net.eval().state_dict(), root / "cifar10" / "corruptions" / "Modas2021PRIMEResNet18.pt")
    return root, net


def test_robustbench_model_loads_from_its_folder_without_the_network(robustbench_dir):
    root, reference = robustbench_dir
    loaded = load_model("robustbench:cifar10:corruptions:Modas2021PRIMEResNet18", model_dir=root)
    assert loaded.name == "robustbench:cifar10:corruptions:Modas2021PRIMEResNet18"
    assert (loaded.num_classes, loaded.dataset, loaded.meta["lambda"]) == (10, "cifar10", {})
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), reference(x))  # [0, 1] in: the zoo model normalises itself
    assert loaded.sha256 == weights_sha256(reference)


def test_robustbench_downloads_only_when_allowed(robustbench_dir, tmp_path, monkeypatch):
    from robust_csc.models.robustbench_zoo import import_robustbench

    utils = import_robustbench("utils")
    _, reference = robustbench_dir
    calls = []

    def fake_download(gdrive_id, path):  # stands in for gdown: no network here
        calls.append(gdrive_id)
        torch.save(reference.state_dict(), path)

    monkeypatch.setattr(utils, "download_gdrive_new", fake_download)
    reference_name = "robustbench:cifar10:corruptions:Modas2021PRIMEResNet18"
    with pytest.raises(RobustCSCError, match="has no checkpoint at .*Modas2021PRIMEResNet18.pt; .*--allow-download"):
        load_model(reference_name, model_dir=tmp_path / "empty")
    assert calls == [] and not (tmp_path / "empty").exists()
    loaded = load_model(reference_name, model_dir=tmp_path / "empty", allow_download=True)
    assert len(calls) == 1 and loaded.sha256 == weights_sha256(reference)


def test_robustbench_mistakes(robustbench_dir, tmp_path):
    root, _ = robustbench_dir
    for reference, message in [
        ("robustbench:cifar10:Linf:Standrd", "RobustBench's cifar10 Linf zoo has no model 'Standrd'; did you mean Standard"),
        ("robustbench:cifar11:Linf:Standard", "RobustBench has no data set 'cifar11'"),
        ("robustbench:cifar10:corruption:Standard", "RobustBench has no threat model 'corruption'"),
        ("robustbench:cifar10:Standard", "is not robustbench:DATASET:THREAT:NAME"),
    ]:
        with pytest.raises(RobustCSCError, match=message):
            load_model(reference, model_dir=root)
    marker = tmp_path / "MARKER"
    (tmp_path / "m" / "cifar10" / "corruptions").mkdir(parents=True)
    malicious(tmp_path / "m" / "cifar10" / "corruptions" / "Standard.pt", marker, legacy=False)
    with pytest.raises(RobustCSCError, match="contains code that would run on load"):
        load_model("robustbench:cifar10:corruptions:Standard", model_dir=tmp_path / "m")
    assert not marker.exists()
    with pytest.raises(RobustCSCError, match="drop --weights, --mean and --std"):
        load_model("robustbench:cifar10:corruptions:Modas2021PRIMEResNet18", model_dir=root, weights="w.pt")


def test_a_missing_or_shadowed_robustbench_is_named(monkeypatch):
    from importlib import metadata

    from robust_csc.models import robustbench_zoo

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    robustbench_zoo._check_distribution.cache_clear()
    monkeypatch.setattr(robustbench_zoo.metadata, "distribution", missing)
    try:
        with pytest.raises(RobustCSCError, match=r"the robustbench package is not installed.*pip install 'robust-csc\[robustbench\]'"):
            robustbench_zoo.import_robustbench("utils")
    finally:
        robustbench_zoo._check_distribution.cache_clear()
