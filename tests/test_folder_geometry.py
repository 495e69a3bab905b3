"""Image folders: the standard evaluation geometry (short side to size / 0.875, centre crop),
files smaller than the crop, greyscale and CMYK JPEGs converted to RGB."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from labelenh.data import load_dataset
from labelenh.views import ViewSpec, gather_and_apply, sample_views

SIZE = 24


def write(path, arr: np.ndarray, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr)
    (im.convert(mode) if mode != im.mode else im).save(path, "JPEG", quality=90)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """RGB files of several sizes (one smaller than the crop on both sides, one on one side),
    a greyscale and a CMYK JPEG."""
    root = tmp_path_factory.mktemp("geometry")
    g = np.random.default_rng(1)
    sizes = [(375, 500), (500, 375), (60, 41), (13, 9), (30, 17), (24, 24)]
    for split in ("train", "val"):
        for k, (h, w) in enumerate(sizes):
            # smooth images: JPEG noise stays small, so differences measure the geometry
            base = g.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
            arr = np.asarray(Image.fromarray(base).resize((w, h), Image.BICUBIC))
            write(root / split / f"c{k % 2}" / f"{k}.jpg", arr)
        write(root / split / "c0" / "grey.jpg", g.integers(0, 256, (40, 50, 3), dtype=np.uint8), "L")
        write(root / split / "c1" / "cmyk.jpg", g.integers(0, 256, (50, 40, 3), dtype=np.uint8), "CMYK")
    return load_dataset(f"folder:{root}", image_size=SIZE, crop_pct=0.875)


def test_eval_geometry_equals_torchvision_resize_and_centre_crop(folder):
    test = folder.test
    tv = T.Compose([T.Resize(math.floor(SIZE / 0.875)), T.CenterCrop(SIZE), T.PILToTensor()])
    x = test.load(torch.arange(len(test)))
    assert x.shape == (len(test), 3, SIZE, SIZE)
    for i in range(len(test)):
        with Image.open(test.root / test.paths[i]) as im:
            ref = tv(im.convert("RGB"))
        diff = (x[i].int() - ref.int()).abs().max()
        assert diff <= 1, (test.paths[i], int(diff))  # same PIL resize: within rounding


def test_the_crop_is_centred_on_a_larger_resize_than_the_image_size(folder):
    """crop_pct matters: 0.875 shows less of the image than a plain resize to SIZE."""
    test = folder.test
    i = test.paths.index("c0/0.jpg")
    plain = T.Compose([T.Resize(SIZE), T.CenterCrop(SIZE), T.PILToTensor()])
    with Image.open(test.root / test.paths[i]) as im:
        ref = plain(im.convert("RGB"))
    assert (test.load(torch.tensor([i]))[0].int() - ref.int()).abs().max() > 8


def test_greyscale_and_cmyk_files_are_converted_not_refused(folder):
    train = folder.train
    for name in ("c0/grey.jpg", "c1/cmyk.jpg"):
        i = train.paths.index(name)
        with Image.open(train.root / name) as im:
            assert im.mode in ("L", "CMYK")
        x = train.load(torch.tensor([i]))
        assert x.shape == (1, 3, SIZE, SIZE) and x.dtype == torch.uint8
        assert train.load_original(i).shape[0] == 3
    grey = train.load(torch.tensor([train.paths.index("c0/grey.jpg")]))[0]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


def test_files_smaller_than_the_crop_are_upsampled(folder):
    train = folder.train
    small = [train.paths.index(p) for p in ("c1/3.jpg", "c0/4.jpg")]  # 13x9 and 30x17
    assert train.load(torch.tensor(small)).shape == (2, 3, SIZE, SIZE)
    rec = sample_views(len(train), 4, ViewSpec("rrc"), 0, (SIZE, SIZE), samples=torch.tensor(small), source=train)
    box = rec.crop_box[:, 0]
    sizes = torch.as_tensor(train.original_sizes(rec.sample))
    assert (box[:, 0] + box[:, 2] <= sizes[:, 0]).all() and (box[:, 1] + box[:, 3] <= sizes[:, 1]).all()
    x, _ = gather_and_apply(train, rec, folder.num_classes)
    assert x.shape == (len(rec), 3, SIZE, SIZE) and torch.isfinite(x).all()


def test_imagenet_teacher_recipes_train_on_rrc():
    from pathlib import Path

    from labelenh.cli import common as c

    root = Path(__file__).resolve().parents[1] / "teachers"
    seen = {}
    for p in sorted(root.glob("imagenet_*.toml")):
        v = c.resolve({}, c.read_recipe(p, c.TRAIN_KEYS | c.DATA_KEYS | {"model", "aug"}))
        cfg = c.train_config(v)
        assert ViewSpec.parse(v["aug"]).op == "rrc" and v["image_size"] == 224, p.name
        assert (cfg.batch_size, cfg.lr, cfg.weight_decay) == (256, 0.1, 1e-4), p.name
        seen[p.stem] = (cfg.epochs, cfg.schedule, cfg.warmup_epochs)
    assert seen["imagenet_resnet50"] == (100, "multistep", 0)
    assert seen["imagenet_resnet50_ols"] == (250, "cosine", 5)


def test_rrc_views_of_a_folder_equal_torchvision_on_pil_images(folder):
    """The crop of a file: exactly torchvision's RandomResizedCrop + flip on the PIL image,
    given the same box and flip."""
    import torchvision.transforms.functional as TF

    train = folder.train
    rec = sample_views(len(train), 3, ViewSpec("rrc"), 5, (SIZE, SIZE), source=train)
    x, _ = gather_and_apply(train, rec, folder.num_classes)
    for k in range(len(rec)):
        top, left, h, w = (int(v) for v in rec.crop_box[k, 0])
        with Image.open(train.root / train.paths[int(rec.sample[k])]) as im:
            ref = TF.resized_crop(im.convert("RGB"), top, left, h, w, [SIZE, SIZE],
                                  interpolation=T.InterpolationMode.BILINEAR)
        if bool(rec.flip[k, 0]):
            ref = TF.hflip(ref)
        assert torch.equal(x[k].to(torch.uint8), TF.pil_to_tensor(ref)), k
