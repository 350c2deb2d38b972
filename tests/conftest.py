import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny problems: intra-op threads only add overhead (and thrash on a shared CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits_sdnet(tmp_path_factory):
    """A width-8 SDNet-18 trained on 768 digits for 3 epochs (a few seconds): its checkpoint and the model."""
    from robust_csc.models.checkpoints import load_checkpoint
    from robust_csc.training import TrainConfig, train

    out = tmp_path_factory.mktemp("digits-sdnet")
    torch.manual_seed(0)
    summary = train(
        TrainConfig(model="sdnet18", dataset="digits", width=8, epochs=3, batch_size=32, train_subset=768,
                    test_subset=64, out_dir=out, resume=False)
    )
    path = out / "model.safetensors"
    model, _ = load_checkpoint(path)
    return {"model": model, "path": path, "acc": summary["test_acc"]}
