"""The class-folder listing: what is taken (any-case extensions, nested, symlinked), what is named as left out,
and the compact file list that the loaders, sharding and `take` use."""
import io
import logging
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import pipelines
from pipelines import ConfigError, open_source
from pipelines.sampling import epoch_batches, shard_indices, split_batches
from pipelines.sources import take
from pipelines.tree import IMAGE_EXTENSIONS, FileList, list_split


def image_bytes(fmt: str, value: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


def write(root, *names, fmt="JPEG"):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes(fmt))


def not_taken_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "pipelines.tree" and "not taken" in r.getMessage()]


def test_extensions_in_any_case_are_taken_and_decoded(tmp_path):
    write(tmp_path, "train/a/1.JPG", "train/a/2.Jpeg", "train/a/3.jpe", "train/b/4.jpeg", "train/b/5.jpg",
          "val/a/6.JPEG")
    write(tmp_path, "train/b/6.PNG", fmt="PNG")
    write(tmp_path, "train/b/7.webp", "train/b/8.WebP", fmt="WEBP")
    source = open_source(tmp_path, "train")
    assert [os.path.basename(f) for f in source.files] == ["1.JPG", "2.Jpeg", "3.jpe", "4.jpeg", "5.jpg", "6.PNG",
                                                           "7.webp", "8.WebP"]
    assert source.labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 1] and source.classes == ["a", "b"]
    loader = pipelines.build_loader("torch", source, split="test", batch_size=8, image_size=8, num_workers=0)
    images, labels = next(iter(loader))
    assert images.shape == (8, 3, 8, 8) and labels.tolist() == source.labels.tolist()
    assert set(IMAGE_EXTENSIONS) == {".jpg", ".jpeg", ".jpe", ".png", ".webp"}


def test_files_not_taken_are_counted_and_named_in_one_line(tmp_path, caplog):
    write(tmp_path, "train/a/1.jpg", "train/a/._1.jpg", "train/b/2.jpg", "train/b/3.gif", "val/a/4.jpg")
    write(tmp_path, "train/a/5.bmp", fmt="BMP")
    (tmp_path / "train/a/.DS_Store").write_bytes(b"\0")
    (tmp_path / "train/b/notes.txt").write_text("x")
    (tmp_path / "train/labels.csv").write_text("x")
    (tmp_path / "train/.ipynb_checkpoints").mkdir()
    with caplog.at_level(logging.WARNING, logger="pipelines.tree"):
        source = open_source(tmp_path, "train")
        open_source(tmp_path, "train")
    assert [os.path.basename(f) for f in source.files] == ["1.jpg", "2.jpg"] and source.classes == ["a", "b"]
    (line,) = not_taken_lines(caplog)  # one line, logged once however often the tree is listed
    assert "\n" not in line and line.startswith(f"rkd: 7 entries in {tmp_path / 'train'} are not taken")
    assert line.count(", ") >= 2 and "and 4 more" in line and ".jpe" in line
    listing = list_split(tmp_path, "train")
    named = set(listing.not_taken_examples)
    assert listing.not_taken == 7 and len(named) == 3
    assert named <= {"labels.csv", ".ipynb_checkpoints/", "a/._1.jpg", "a/5.bmp", "a/.DS_Store", "b/3.gif",
                     "b/notes.txt"}


def test_val_class_missing_from_train_is_an_error(tmp_path):
    write(tmp_path, "train/a/1.jpg", "val/a/2.jpg", "val/zebra/3.jpg")
    with pytest.raises(ConfigError, match=r"class folder 'zebra' in .*val is not in .*train; classes come from"):
        open_source(tmp_path, "val")
    assert len(open_source(tmp_path, "train")) == 1


def test_empty_class_folders_are_reported(tmp_path, caplog):
    write(tmp_path, "train/a/1.jpg", "train/c/2.jpg", "val/a/3.jpg")
    (tmp_path / "train/b").mkdir()
    with caplog.at_level(logging.WARNING, logger="pipelines.tree"):
        train, val = open_source(tmp_path, "train"), open_source(tmp_path, "val")
    assert train.classes == val.classes == ["a", "b", "c"] and train.labels.tolist() == [0, 2]
    lines = [r.getMessage() for r in caplog.records if "have no images" in r.getMessage()]
    assert lines == [f"rkd: 1 of 3 classes have no images in {tmp_path / 'train'}: b",
                     f"rkd: 2 of 3 classes have no images in {tmp_path / 'val'}: b, c"]


def test_no_images_at_all_is_an_error(tmp_path):
    (tmp_path / "train/a").mkdir(parents=True)
    (tmp_path / "train/a/x.txt").write_text("x")
    (tmp_path / "val").mkdir()
    with pytest.raises(ConfigError, match=r"train holds no images \(.jpg .jpeg .jpe .png .webp, any case\)"):
        open_source(tmp_path, "train")


def test_nested_folders_belong_to_their_class(tmp_path):
    write(tmp_path, "train/a/z.jpg", "train/a/deep/er/y.jpg", "train/a/deep/x.jpg", "train/b/w.jpg",
          "val/b/v.jpg")
    source = open_source(tmp_path, "train")
    relative = [os.path.relpath(f, tmp_path / "train") for f in source.files]
    assert relative == ["a/z.jpg", "a/deep/x.jpg", "a/deep/er/y.jpg", "b/w.jpg"]
    assert source.labels.tolist() == [0, 0, 0, 1]


def test_symlinked_class_folders_are_followed_and_loops_listed_once(tmp_path, caplog):
    elsewhere = tmp_path / "elsewhere"
    write(elsewhere, "b/1.jpg", "b/2.jpg")
    write(tmp_path, "tree/train/a/3.jpg", "tree/val/a/4.jpg")
    (tmp_path / "tree/train/b").symlink_to(elsewhere / "b", target_is_directory=True)
    (tmp_path / "tree/train/a/loop").symlink_to(tmp_path / "tree/train/a", target_is_directory=True)
    with caplog.at_level(logging.WARNING, logger="pipelines.tree"):
        source = open_source(tmp_path / "tree", "train")
    assert [os.path.relpath(f, tmp_path / "tree/train") for f in source.files] == ["a/3.jpg", "b/1.jpg", "b/2.jpg"]
    assert source.labels.tolist() == [0, 1, 1]
    (line,) = not_taken_lines(caplog)
    assert "1 entries" in line and "a/loop/" in line


def test_file_list_indexing_take_and_pickling(tmp_path):
    names = [f"c{i % 3}/img_{i:03d}.JPEG" for i in range(10)] + ["c0/caf\u00e9.jpg"]
    blob = b"".join(os.fsencode(n) for n in names)
    offsets = np.concatenate([[0], np.cumsum([len(os.fsencode(n)) for n in names])]).astype(np.int64)
    files = FileList(tmp_path, blob, offsets)
    expected = [str(tmp_path / n) for n in names]
    assert len(files) == 11 and list(files) == expected and [files[i] for i in range(11)] == expected
    assert files[-1] == expected[-1] and files[np.int64(3)] == files[torch.tensor(3)] == expected[3]
    with pytest.raises(IndexError):
        files[11]
    picked = files.take(np.array([10, 2, 2, 0]))
    assert list(picked) == [expected[10], expected[2], expected[2], expected[0]]
    assert list(files[2:5]) == expected[2:5] and list(files[torch.tensor([1, 0])]) == [expected[1], expected[0]]
    assert list(pickle.loads(pickle.dumps(files))) == expected


def test_take_keeps_the_compact_list(tmp_path):
    write(tmp_path, *[f"train/c{i % 4}/{i}.jpg" for i in range(12)], "val/c0/x.jpg")
    source = open_source(tmp_path, "train")
    subset = take(source, torch.tensor([11, 0, 5]))
    assert isinstance(subset.files, FileList)
    assert list(subset.files) == [source.files[11], source.files[0], source.files[5]]
    assert subset.labels.tolist() == [source.labels[i].item() for i in (11, 0, 5)]


@pytest.mark.parametrize("num_samples", [0, 1, 7, 64, 100, 257])
@pytest.mark.parametrize("world_size", [1, 3, 8])
@pytest.mark.parametrize("drop_last", [False, True])
def test_epoch_batches_is_the_length_of_the_drawn_epoch(num_samples, world_size, drop_last):
    for rank in range(world_size):
        indices = shard_indices(num_samples, seed=0, epoch=1, rank=rank, world_size=world_size, shuffle=True,
                                drop_last=drop_last)
        assert indices.base is None or indices.base.size <= indices.size  # not a view of the whole epoch
        assert len(split_batches(indices, 16, drop_last)) == epoch_batches(num_samples, world_size, 16, drop_last)


def test_file_source_keeps_paths_given_as_a_list(tmp_path):
    write(tmp_path, "a.jpg", "b.png")
    source = pipelines.FileSource(name="x", path=tmp_path, split="train", files=[tmp_path / "a.jpg", "b.png"],
                                  labels=torch.tensor([0, 1]), classes=["p", "q"])
    assert isinstance(source.files, FileList) and list(source.files) == [str(tmp_path / "a.jpg"), "b.png"]
    source.files = [str(tmp_path / "b.png")]  # assigned later: take still works
    assert list(take(source, torch.tensor([0])).files) == [str(tmp_path / "b.png")]
