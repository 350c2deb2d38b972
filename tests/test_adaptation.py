"""Test-time adaptation settings (bn-adapt, tent, on top of lambda settings) against hand-written references."""

import copy
import functools
import hashlib
import json

import pandas as pd
import pytest
import torch
from torch import nn

from cli_support import assert_user_error, run_main
from robust_csc.adaptation import BNAdapt, Composed, Tent, compose, parse_setting, parse_settings, prepare_settings
from robust_csc.adaptation.settings import bind
from robust_csc.csc import get_lambda, select_csc_layers
from robust_csc.data.generated import generated_clean, generated_suite
from robust_csc.errors import RobustCSCError
from robust_csc.evaluation.harness import evaluate, evaluate_checkpoint
from robust_csc.evaluation.store import CellKey, ResultsStore
from robust_csc.lambdas import LambdaSetting
from robust_csc.models import create_model
from robust_csc.models.checkpoints import checkpoint_hash, save_checkpoint
from robust_csc.tuning.policy import CellPolicy

pytestmark = pytest.mark.usefixtures("one_thread")

SHA = "ef" * 32
N_IMAGES = 20
BATCH = 8  # 20 images: batches of 8, 8 and a short one of 4
CORRUPTIONS = ["gaussian_noise", "contrast"]
SEVERITIES = [2, 5]


# ---------------------------------------------------------------- models, data and what "unchanged" means


def tiny(arch="sdnet18", seed=0):
    """A small model whose BatchNorm layers carry non-trivial source statistics and affine values."""
    torch.manual_seed(seed)
    model = create_model(arch, num_classes=10, width=4)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
    return model.eval()


def suite():
    return generated_suite("digits", corruptions=CORRUPTIONS, severities=SEVERITIES, n_examples=N_IMAGES)


def clean():
    return generated_clean("digits", n_examples=N_IMAGES)


def tensors(dataset):
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([item[0] for item in items]), torch.tensor([int(item[1]) for item in items])


def batches(images, size=BATCH):
    return [images[i:i + size] for i in range(0, len(images), size)]


@functools.lru_cache(maxsize=1)
def harness_cells():
    """(images, labels) of every cell in the harness's order: the clean cell, then the suite's cells."""
    s = suite()
    return [tensors(clean())] + [tensors(s.dataset(c, v)) for c, v in ((c.corruption, c.severity) for c in s.cells())]


def state_hash(model):
    """sha256 over the state_dict's names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


def flags(model):
    """Every module's train/eval flag, every parameter's requires_grad and whether it holds a grad."""
    return ([(n, m.training) for n, m in model.named_modules()]
            + [(n, p.requires_grad, p.grad is None) for n, p in model.named_parameters()])


def run_cells(setting, model, cells):
    """setting.applied per cell, a call per batch; the model must come back unchanged after every cell."""
    before, before_flags = state_hash(model), flags(model)
    outs = []
    for images in cells:
        with setting.applied(model) as run:
            outs.append([run(x).detach() for x in batches(images)])
        assert state_hash(model) == before and flags(model) == before_flags
    return outs


def close(a, b, atol=1e-5):
    assert len(a) == len(b)
    for cell_a, cell_b in zip(a, b):
        assert len(cell_a) == len(cell_b)
        for x, y in zip(cell_a, cell_b):
            torch.testing.assert_close(x, y, atol=atol, rtol=1e-5)


# ---------------------------------------------------------------- independent references


def reference_batch_statistics(model, images):
    """bn-adapt N=0 by hand: a fresh copy per batch with its BatchNorm layers (only) in train mode."""
    outs = []
    for x in batches(images):
        ref = copy.deepcopy(model)
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.train()
                m.momentum = None
        with torch.no_grad():
            outs.append(ref(x))
    return outs


def reference_mixed_statistics(model, images, prior):
    """bn-adapt N>0 by hand: a fresh eval-mode copy per batch whose BatchNorm buffers a pre-hook overwrites
    with N/(N+n) * source + n/(N+n) * the batch's mean and biased variance, computed here."""
    outs = []
    for x in batches(images):
        ref = copy.deepcopy(model).eval()

        def mix(layer, inputs):
            h = inputs[0].double()
            n = h.shape[0]
            mean = h.mean(dim=(0, 2, 3))
            var = ((h - mean[None, :, None, None]) ** 2).mean(dim=(0, 2, 3))
            w = prior / (prior + n)
            layer.running_mean.copy_(w * layer.running_mean.double() + (1 - w) * mean)
            layer.running_var.copy_(w * layer.running_var.double() + (1 - w) * var)

        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.register_forward_pre_hook(mix)
        with torch.no_grad():
            outs.append(ref(x))
    return outs


def reference_tent(model, cells, make_optimizer, episodic, set_lambda=None):
    """Tent by hand: a deep copy, BatchNorm layers in train mode without running statistics, only their
    affine parameters trainable, one optimizer step per batch on the mean softmax entropy; the outputs
    are the forward pass's before the step. Episodic: a new copy and optimizer per cell; online: one."""
    outs, ref = [], None
    for images in cells:
        if ref is None or episodic:
            ref = copy.deepcopy(model)
            if set_lambda is not None:
                set_lambda(ref)
            ref.requires_grad_(False)
            params = []
            for m in ref.modules():
                if isinstance(m, nn.BatchNorm2d):
                    # Only the BatchNorm layers: the authors' code puts the whole model in train mode, which
                    # for their models only affects BatchNorm (here it would also change the CSC step size).
                    m.train()
                    m.track_running_stats = False
                    m.running_mean = None
                    m.running_var = None
                    m.weight.requires_grad_(True)
                    m.bias.requires_grad_(True)
                    params += [m.weight, m.bias]
            optimizer = make_optimizer(params)
        cell = []
        for x in batches(images):
            out = ref(x)
            loss = -(out.softmax(1) * out.log_softmax(1)).sum(1).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            cell.append(out.detach())
        outs.append(cell)
    return outs


def adam(lr):
    return lambda params: torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), weight_decay=0.0)


def sgd(lr):
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=True)


# ---------------------------------------------------------------- bn-adapt


@pytest.mark.parametrize("arch", ["sdnet18", "resnet18"])
def test_bn_adapt_without_prior_equals_batch_statistics_by_hand(arch):
    model = tiny(arch)
    cells = [cell[0] for cell in harness_cells()[:2]]
    ours = run_cells(BNAdapt(prior=0), model, cells)
    close(ours, [reference_batch_statistics(model, images) for images in cells])
    # the source statistics differ from the batch's: adapting changed the outputs
    with torch.no_grad():
        source = model(cells[0][:BATCH])
    assert (ours[0][0] - source).abs().max() > 1e-2


def test_bn_adapt_with_prior_equals_mixed_statistics_by_hand():
    model = tiny()
    cells = [cell[0] for cell in harness_cells()[1:3]]
    for prior in (4.0, 16.0):
        close(run_cells(BNAdapt(prior=prior), model, cells),
              [reference_mixed_statistics(model, images, prior) for images in cells])
    # a prior of ~infinite strength is the source statistics; N=0 through the mixing path is the batch's
    with torch.no_grad():
        source = [model(x) for x in batches(cells[0])]
    close(run_cells(BNAdapt(prior=1e12), model, cells[:1]), [source], atol=1e-4)
    close([reference_mixed_statistics(model, cells[0], 0.0)], [reference_batch_statistics(model, cells[0])])


def test_bn_adapt_in_the_harness_scores_what_the_reference_predicts(tmp_path):
    model = tiny()
    result = evaluate(model, suite(), store=tmp_path / "r.sqlite", model_name="sdnet18", checkpoint_sha256=SHA,
                      dataset="digits", lambdas=[BNAdapt(prior=0), BNAdapt(prior=16)], clean=clean(), batch_size=BATCH)
    frame = result.frame
    assert set(frame["lambda_setting"]) == {"bn-adapt[N=0,seed=0,bs=8]", "bn-adapt[N=16,seed=0,bs=8]"}
    for prior, name in ((0.0, "bn-adapt[N=0,seed=0,bs=8]"), (16.0, "bn-adapt[N=16,seed=0,bs=8]")):
        rows = frame[frame["lambda_setting"] == name].reset_index(drop=True)
        for row, (images, labels) in zip(rows.itertuples(), harness_cells()):
            expected = torch.cat(reference_mixed_statistics(model, images, prior)).argmax(1)
            assert (row.n, row.correct) == (len(labels), int((expected == labels).sum()))
            assert json.loads(row.extra)["adaptation"] == "bn-adapt" and json.loads(row.extra)["batch_size"] == BATCH


# ---------------------------------------------------------------- tent


@pytest.mark.parametrize("episodic", [True, False])
def test_tent_equals_a_single_step_loop_by_hand(episodic):
    model = tiny()
    cells = [cell[0] for cell in harness_cells()[:3]]
    tent = bind(Tent(lr=0.01, episodic=episodic), BATCH)
    ours = run_cells(tent, model, cells)
    close(ours, reference_tent(model, cells, adam(0.01), episodic))
    batch_stats = run_cells(BNAdapt(prior=0), model, cells)
    # before the first step of a run tent predicts as bn-adapt N=0; after steps it does not
    close([ours[0][:1]], [batch_stats[0][:1]])
    assert (ours[0][2] - batch_stats[0][2]).abs().max() > 1e-3
    # the second cell starts from the source weights (episodic) or from the first cell's (online)
    start_moved = (ours[1][0] - batch_stats[1][0]).abs().max()
    assert start_moved < 1e-5 if episodic else start_moved > 1e-3


def test_tent_with_sgd_equals_the_loop_by_hand():
    model = tiny("resnet18")
    cells = [cell[0] for cell in harness_cells()[:2]]
    tent = Tent(optimizer="sgd", lr=0.05, episodic=False)
    assert (tent.momentum, tent.nesterov) == (0.9, True)
    close(run_cells(tent, model, cells), reference_tent(model, cells, sgd(0.05), episodic=False))


def test_tent_in_the_harness_scores_what_the_reference_predicts_in_cell_order(tmp_path):
    model = tiny()
    cells = harness_cells()
    result = evaluate(model, suite(), store=tmp_path / "r.sqlite", model_name="sdnet18", checkpoint_sha256=SHA,
                      dataset="digits", lambdas=[Tent(lr=0.01), Tent(lr=0.01, episodic=False)], clean=clean(),
                      batch_size=BATCH)
    for episodic in (True, False):
        name = bind(Tent(lr=0.01, episodic=episodic), BATCH).name
        rows = result.frame[result.frame["lambda_setting"] == name].reset_index(drop=True)
        assert [(r.corruption, r.severity) for r in rows.itertuples()] == [("none", 0)] + [
            (c, s) for c in CORRUPTIONS for s in SEVERITIES]
        reference = reference_tent(model, [images for images, _ in cells], adam(0.01), episodic)
        for i, (row, (_, labels)) in enumerate(zip(rows.itertuples(), cells)):
            expected = torch.cat(reference[i]).argmax(1)
            assert row.correct == int((expected == labels).sum())
            extra = json.loads(row.extra)
            assert extra["adaptation"] == "tent" and extra["mean_entropy"] > 0
            assert extra.get("online_cells_before") == (None if episodic else i)


def test_tent_refuses_inference_mode_and_restores_the_model_after_an_error():
    model = tiny()
    before, before_flags = state_hash(model), flags(model)
    with torch.inference_mode(), pytest.raises(RobustCSCError, match="inference_mode"):
        with Tent().applied(model):
            pass
    x = tensors(clean())[0][:BATCH]
    with pytest.raises(KeyError):
        with Tent(lr=0.1).applied(model) as run:
            run(x)
            assert state_hash(model) != before  # the affine parameters did move
            raise KeyError("stop mid-cell")
    assert state_hash(model) == before and flags(model) == before_flags
    # a setting named for batch size 4 refuses a batch of 8 (and restores the model too)
    with pytest.raises(RobustCSCError, match="batches of 4 images"):
        with bind(Tent(), 4).applied(model) as run:
            run(x)
    assert state_hash(model) == before and flags(model) == before_flags


# ---------------------------------------------------------------- on top of a lambda setting


def test_tent_on_a_lambda_setting_sets_lambda_during_the_cell_and_restores_it():
    model = tiny()
    trained = get_lambda(model)
    seen = []
    stem = next(iter(select_csc_layers(model, "stem").values()))
    handle = stem.register_forward_pre_hook(lambda layer, inputs: seen.append(float(layer.lam)))
    setting = compose(Tent(lr=0.01), "stem=0.5")
    assert isinstance(setting, Composed) and setting.name == Tent(lr=0.01).name + "+stem=0.5"
    cells = [cell[0] for cell in harness_cells()[:2]]
    ours = run_cells(setting, model, cells)
    handle.remove()
    assert set(seen) == {0.5} and get_lambda(model) == trained
    # the same as tent by hand on a copy whose stem lambda is 0.5
    def stem_at_half(ref):
        next(iter(select_csc_layers(ref, "stem").values())).lam = 0.5

    close(ours, reference_tent(model, cells, adam(0.01), True, set_lambda=stem_at_half))
    # and not the same as tent at the trained lambda
    assert (ours[0][0] - run_cells(Tent(lr=0.01), model, cells[:1])[0][0]).abs().max() > 1e-4


def cell_policy(sha=SHA):
    """A grid policy "tuned" on half of the suite's 20 digits: it is scored on the other half only."""
    from policy_support import policy_meta

    meta = policy_meta(n=N_IMAGES, grid=[0.1, 0.3, 0.7], checkpoint_sha256=sha)
    cells = {("none", 0): 0.1, **{(c, s): 0.3 if s < 5 else 0.7 for c in CORRUPTIONS for s in SEVERITIES}}
    return CellPolicy(cells, meta)


def test_bn_adapt_on_a_policy_in_the_harness_records_both_parts(tmp_path):
    model = tiny()
    policy = cell_policy()
    setting = compose(BNAdapt(prior=0), policy)
    result = evaluate(model, suite(), store=tmp_path / "r.sqlite", model_name="sdnet18", checkpoint_sha256=SHA,
                      dataset="digits", lambdas=[policy, setting], clean=clean(), batch_size=BATCH,
                      split=f"test[:{N_IMAGES}]")
    assert result.split == f"test[:{N_IMAGES}]:report:s0"  # the policy inside the composed setting restricts the run
    name = f"bn-adapt[N=0,seed=0,bs=8]+{policy.name}"
    rows = result.frame[result.frame["lambda_setting"] == name]
    assert len(rows) == 5
    for row in rows.itertuples():
        extra = json.loads(row.extra)
        assert extra["lambda"] == policy.value_for(row.corruption, row.severity) and extra["adaptation"] == "bn-adapt"
        data = clean() if row.corruption == "none" else suite().dataset(row.corruption, row.severity)
        images, labels = tensors(policy.reporting_split().subset(data, "report"))
        ref = copy.deepcopy(model)
        next(iter(select_csc_layers(ref, "stem").values())).lam = extra["lambda"]
        expected = torch.cat(reference_batch_statistics(ref, images)).argmax(1)
        assert row.correct == int((expected == labels).sum())
    assert set(get_lambda(model).values()) == {0.1}  # the trained lambda, restored


# ---------------------------------------------------------------- reproducible, restored, the file untouched


class Noisy(nn.Module):
    """A BatchNorm model that draws random numbers in its forward pass (as a user's stochastic layer might)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        h = self.bn(self.conv(x))
        return self.fc((h + torch.randn_like(h)).mean(dim=(2, 3)))


@pytest.mark.parametrize("make", [lambda seed: BNAdapt(seed=seed), lambda seed: Tent(seed=seed)])
def test_the_seed_decides_random_draws_and_the_callers_rng_is_left_alone(make):
    torch.manual_seed(0)
    model = Noisy().eval()
    x = tensors(clean())[0][:BATCH]

    def once(seed):
        state = torch.get_rng_state()
        with make(seed).applied(model) as run:
            out = run(x)
        assert torch.equal(torch.get_rng_state(), state)
        return out

    assert torch.equal(once(0), once(0)) and not torch.equal(once(0), once(1))


def test_reruns_give_the_same_numbers_and_the_checkpoint_file_is_untouched(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny(), dataset="digits")
    sha, data = checkpoint_hash(path), path.read_bytes()
    settings = [None, BNAdapt(prior=16), Tent(episodic=False, optimizer="sgd"), compose(Tent(), "stem=0.5")]
    frames = []
    for store in ("a.sqlite", "b.sqlite"):
        result = evaluate_checkpoint(path, suite(), store=tmp_path / store, lambdas=settings, clean=clean(),
                                     batch_size=BATCH)
        frames.append(result.frame.sort_values(["lambda_setting", "corruption", "severity"]).reset_index(drop=True))
    assert len(frames[0]) == 4 * 5
    for column in ("lambda_setting", "corruption", "severity", "n", "correct", "mean_recon_error"):
        assert list(frames[0][column]) == list(frames[1][column])
    assert [json.loads(e) for e in frames[0]["extra"]] == [json.loads(e) for e in frames[1]["extra"]]
    assert checkpoint_hash(path) == sha and path.read_bytes() == data
    # a rerun into a filled store skips every cell
    again = evaluate_checkpoint(path, suite(), store=tmp_path / "a.sqlite", lambdas=settings, clean=clean(),
                                batch_size=BATCH)
    assert (again.cells_run, again.cells_skipped) == (0, 20)


# ---------------------------------------------------------------- refusals


class NoNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.conv(x).relu().mean(dim=(2, 3)))


def run_refused(tmp_path, model, settings, batch_size=BATCH, match=""):
    store = tmp_path / "never.sqlite"
    with pytest.raises(RobustCSCError, match=match) as info:
        evaluate(model, suite(), store=store, model_name="m", checkpoint_sha256=SHA, dataset="digits",
                 lambdas=settings, clean=clean(), batch_size=batch_size)
    assert not store.exists()  # refused before anything was written
    assert "\n" not in str(info.value)


def test_refusals_come_before_anything_is_written(tmp_path):
    run_refused(tmp_path, NoNorm(), [BNAdapt()], match="no BatchNorm layers.*without test-time adaptation")
    run_refused(tmp_path, NoNorm(), [None, Tent()], match="no BatchNorm layers")
    run_refused(tmp_path, tiny(), [BNAdapt()], batch_size=1, match="batch size 1.*at least 2.*N > 0")
    run_refused(tmp_path, tiny(), [Tent()], batch_size=1, match="batch size 1")
    run_refused(tmp_path, tiny(), [BNAdapt(batch_size=64)], match="set up for batch size 64.*run uses batch size 8")
    run_refused(tmp_path, tiny("resnet18"), [compose(Tent(), "stem=0.5")], match="no CSC layers")
    no_affine = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False), nn.Flatten(), nn.LazyLinear(10))
    run_refused(tmp_path, no_affine, [Tent()], match="no affine weight or bias.*bn-adapt")
    no_stats = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.Flatten(),
                             nn.LazyLinear(10))
    run_refused(tmp_path, no_stats, [BNAdapt(prior=8)], match="no running statistics.*N=0")
    # a batch of one image is fine with a prior, and a bn-adapt alone runs on a model without CSC layers
    result = evaluate(tiny("resnet18"), suite(), store=tmp_path / "ok.sqlite", model_name="resnet18",
                      checkpoint_sha256=SHA, dataset="digits", lambdas=[BNAdapt(prior=8)], batch_size=1)
    assert result.cells_run == 4


@pytest.mark.parametrize("text, match", [
    ("tnet", "not understood"),
    ("tent[lr=abc]", "lr='abc' is not valid"),
    ("tent[foo]", "no parameter 'foo'"),
    ("tent[adam,momentum=0.9]", "SGD settings"),
    ("tent[sgd,betas=0.9/0.99]", "Adam setting"),
    ("tent[lr=0]", "learning rate > 0"),
    ("tent[online,episodic]", "episodic twice"),
    ("bn-adapt[N=-1]", "finite number >= 0"),
    ("bn-adapt[N=1", "without ']'"),
    ("tent+policy", "--lambda-policy"),
    ("tent+stem=0.5+scale=2", "more than two parts"),
    ("tent+stem", "has no number"),
])
def test_bad_setting_text_is_one_line(text, match):
    with pytest.raises(RobustCSCError, match=match) as info:
        parse_setting(text)
    assert "\n" not in str(info.value)


def test_names_read_back_as_the_same_setting():
    policy = cell_policy()
    settings = [BNAdapt(), BNAdapt(prior=16, seed=3, batch_size=128), Tent(), Tent(lr=1.25e-4, steps=2),
                Tent(optimizer="sgd", nesterov=False, weight_decay=1e-5, episodic=False, batch_size=64),
                compose(Tent(), "stem=0.5"), compose(BNAdapt(prior=2), policy), compose(Tent(), 0.3)]
    for setting in settings:
        assert parse_setting(setting.name, [policy]) == setting
    assert Tent().name == "tent[adam,lr=0.001,betas=0.9/0.999,wd=0,steps=1,episodic,seed=0]"
    assert Tent(optimizer="sgd").name == "tent[sgd,lr=0.00025,momentum=0.9,nesterov=true,wd=0,steps=1,episodic,seed=0]"
    assert compose(Tent(), None) == Tent() and compose(Tent(), "trained") == Tent()
    # the CLI's list: commas inside brackets stay, "+policy" is the given policy, duplicates go
    parsed = parse_settings(["bn-adapt,tent[sgd,online]", "bn-adapt[N=0]", "tent+policy"], [policy])
    assert parsed == (BNAdapt(), Tent(optimizer="sgd", episodic=False), compose(Tent(), policy))
    # the harness binds the batch size into the name; the same setting with and without bs= is one
    prepared = prepare_settings([BNAdapt(), BNAdapt(batch_size=BATCH), LambdaSetting()], tiny(), BATCH)
    assert [s.name for s in prepared] == ["bn-adapt[N=0,seed=0,bs=8]", "trained"]


# ---------------------------------------------------------------- the CLI: evaluate --tta, then report


CLI_SUITE = ["--suite", "generated", "--dataset", "digits", "--corruptions", "gaussian_noise,contrast",
             "--severities", "2,5", "--n-examples", str(N_IMAGES)]


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tta")
    path = save_checkpoint(folder / "sdnet.safetensors", tiny(), dataset="digits")
    policy = cell_policy(checkpoint_hash(path))
    policy.save(folder / "policy.json")
    return path, folder / "policy.json", policy


def test_evaluate_with_tta_fills_the_store_and_the_report_shows_each_setting(capsys, tmp_path, digits_checkpoint):
    checkpoint, policy_file, policy = digits_checkpoint
    data = checkpoint.read_bytes()
    store = tmp_path / "S.sqlite"
    args = ["evaluate", "--checkpoint", checkpoint, *CLI_SUITE, "--batch-size", BATCH, "--store", store,
            "--lambda", "trained,stem=0.3", "--lambda-policy", policy_file,
            "--tta", "bn-adapt,bn-adapt[N=16],tent[lr=0.01]", "--tta", "tent[lr=0.01]+stem=0.3,bn-adapt+policy"]
    code, out, err = run_main(capsys, *args)
    assert code == 0, err
    tent = bind(Tent(lr=0.01), BATCH).name
    names = ["trained", "stem=0.3", policy.name, "bn-adapt[N=0,seed=0,bs=8]", "bn-adapt[N=16,seed=0,bs=8]", tent,
             f"{tent}+stem=0.3", f"bn-adapt[N=0,seed=0,bs=8]+{policy.name}"]
    for name in names:
        assert f"lambda {name}: accuracy in % by corruption and severity; n = {N_IMAGES // 2} images per cell" in out
    assert out.splitlines()[-1] == f"store: {store}, cells run 40, skipped 0"
    with ResultsStore(store) as results:
        frame = results.to_frame()
    assert sorted(frame["lambda_setting"].value_counts().items()) == sorted((name, 5) for name in names)
    assert checkpoint.read_bytes() == data
    # the same numbers as the Python API gives for the same setting
    # (the policy in the run restricts every setting to its reporting half, here as on the command line)
    direct = evaluate_checkpoint(checkpoint, suite(), store=tmp_path / "direct.sqlite", lambdas=[Tent(lr=0.01), policy],
                                 clean=clean(), batch_size=BATCH, dataset="digits-c[cifar]", split=f"test[:{N_IMAGES}]")
    mine = frame[frame["lambda_setting"] == tent].sort_values(["corruption", "severity"])
    theirs = direct.frame[direct.frame["lambda_setting"] == tent].sort_values(["corruption", "severity"])
    assert list(mine["correct"]) == list(theirs["correct"])

    code, out, err = run_main(capsys, *args)
    assert code == 0 and out.splitlines()[-1] == f"store: {store}, cells run 0, skipped 40"

    report = tmp_path / "report"
    code, out, err = run_main(capsys, "report", "--store", store, "--out", report)
    assert code == 0, err
    summary = pd.read_csv(report / "tables" / "summary.csv")
    assert sorted(summary["lambda_setting"]) == sorted(names)
    series_tables = sorted(p.name for p in (report / "tables").glob("corruptions__*.csv"))
    assert len(series_tables) == len(names)
    assert any("tent_adam_lr_0.01" in p and "stem_0.3" in p for p in series_tables)
    markdown = (report / "report.md").read_text()
    for name in names:
        assert name in markdown


def test_evaluate_refuses_bad_tta_in_one_line_and_writes_nothing(capsys, tmp_path, digits_checkpoint):
    checkpoint, policy_file, _ = digits_checkpoint
    store = tmp_path / "kept.sqlite"
    with ResultsStore(store) as results:
        results.add(CellKey("sdnet18", "0" * 64, "digits", "test"), {"n": 1, "correct": 1, "seconds": 0.0})
    kept = store.read_bytes()
    base = ["evaluate", "--checkpoint", checkpoint, *CLI_SUITE, "--store", store]
    cases = [
        (["--tta", "bn-adapt", "--batch-size", "1"], "batch size 1"),
        (["--tta", "tent", "--batch-size", "1"], "batch size 1"),
        (["--tta", "tent[bs=64]", "--batch-size", "8"], "set up for batch size 64"),
        (["--tta", "tent+policy"], "--lambda-policy"),
        (["--tta", "tent[lr=fast]"], "lr='fast' is not valid"),
        (["--tta", "stem=0.5"], "test-time adaptation 'stem=0.5' is not understood"),
    ]
    for extra, fragment in cases:
        assert_user_error(*run_main(capsys, *base, *extra), fragment)
        assert store.read_bytes() == kept
    fresh = tmp_path / "never.sqlite"
    assert_user_error(*run_main(capsys, "evaluate", "--checkpoint", checkpoint, *CLI_SUITE, "--store", fresh,
                                "--tta", "bn-adapt", "--batch-size", "1"), "batch size 1", "--batch-size")
    assert not fresh.exists()
