"""ImageNet validation images in class folders: `root/<wnid>/<file>.JPEG`."""

from pathlib import Path

from torchvision import datasets, transforms

from robust_csc.data.images import read_rgb_file
from robust_csc.errors import RobustCSCError

_LAYOUT_FIX = "lay the validation images out as <root>/<wnid>/<file>.JPEG, one folder per class"


def imagenet_transform() -> transforms.Compose:
    """The standard evaluation crop: shorter side to 256, centre 224x224."""
    return transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])


def resolve_val_folder(root: str | Path) -> Path:
    """Accept either the class-folder directory itself or a parent holding `val/`."""
    root = Path(root)
    return root / "val" if (root / "val").is_dir() else root


def load_imagenet_val(root: str | Path) -> datasets.ImageFolder:
    """ImageNet validation set; class index = position of the wnid in sorted order.

    Sorted wnids are the standard 0..999 ImageNet class order, so pretrained
    weights' outputs line up with these labels.
    """
    folder = resolve_val_folder(root)
    if not folder.is_dir():
        raise RobustCSCError(
            f"ImageNet folder {folder} not found; {_LAYOUT_FIX} and pass its path as the root"
        )
    if not any(p.is_dir() for p in folder.iterdir()):
        raise RobustCSCError(f"ImageNet folder {folder} has no class sub-folders; {_LAYOUT_FIX}")
    try:
        return datasets.ImageFolder(str(folder), transform=imagenet_transform(), loader=read_rgb_file)
    except FileNotFoundError as exc:
        # ImageFolder refuses class folders that hold no image files.
        raise RobustCSCError(
            f"ImageNet folder {folder} has a class folder without images; {_LAYOUT_FIX}"
        ) from exc
