"""FFCV's image decoding for the ffcv backend: decode, crop (RandomResizedCrop or the evaluation box), resize, flip."""
from __future__ import annotations

from typing import Callable

import numpy as np
from ffcv.fields.rgb_image import IMAGE_MODES, ResizedCropRGBImageDecoder, get_random_crop
from ffcv.libffcv import ctypes_imdecode, ctypes_resize
from ffcv.pipeline.compiler import Compiler
from numba import njit

from ..crops import eval_crop_box
from ..spec import EVAL_CROP_FRACTION, RRC_RATIO, RRC_SCALE


@njit(nogil=True)
def _decode_jpeg(data, out, height, width):
    """Decode the JPEG bytes `data` (height × width) into the flat buffer `out` as HWC RGB."""
    ctypes_imdecode(data.ctypes.data, data.size, height, width, out.ctypes.data, height, width, 0, 0, 1, 1,
                    False, False)


@njit(nogil=True)
def _resize_box(image, top, left, height, width, out):
    """Resize the box of HWC `image` into `out` (OpenCV INTER_AREA, as FFCV's decoders)."""
    ctypes_resize(0, image.ctypes.data, image.shape[0], image.shape[1], top, top + height, left, left + width,
                  out.ctypes.data, out.shape[0], out.shape[1])


# Compiled once per process and shared by every decoder: later loaders compile only their own pipeline code.
_RANDOM_CROP, _CENTER_CROP = njit(nogil=True)(get_random_crop), njit(nogil=True)(eval_crop_box)


class CropFlipDecoder(ResizedCropRGBImageDecoder):
    """FFCV decoder for RGBImageField: decode, crop, resize to `size`², flip.

    Training: RandomResizedCrop boxes (torchvision's sampling) and p=0.5 flips; evaluation: `eval_crop_box`.
    The boxes and flips are drawn sequentially in batch order before the parallel decode, from the RNG of the
    calling thread, which `_SeededEpochIterator` seeds per batch.
    """

    def __init__(self, size: int, train: bool) -> None:
        super().__init__((size, size))
        self.train, self.scale, self.ratio = train, RRC_SCALE, RRC_RATIO
        self.resize_to = round(size / EVAL_CROP_FRACTION)

    @property
    def get_crop_generator(self):  # abstract in FFCV's base class; generate_code calls the shared compiled copies
        return get_random_crop if self.train else eval_crop_box

    def generate_code(self) -> Callable:
        mem_read, my_range, jpg = self.memory_read, Compiler.get_iterator(), IMAGE_MODES["jpg"]
        random_crop, center_crop = _RANDOM_CROP, _CENTER_CROP
        train, size, resize_to = self.train, self.output_size[0], self.resize_to
        scale, ratio = np.array(self.scale), np.array(self.ratio)

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            count = len(batch_indices)
            boxes = np.zeros((count, 5), dtype=np.int64)
            for k in range(count):  # sequential: the seeded draws happen in batch order
                field = metadata[batch_indices[k]]
                height, width = np.int64(field["height"]), np.int64(field["width"])
                if train:
                    i, j, h, w = random_crop(height, width, scale, ratio)
                    boxes[k, 4] = np.random.uniform(0.0, 1.0) < 0.5
                else:
                    i, j, h, w = center_crop(height, width, size, resize_to)
                boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3] = i, j, h, w
            for k in my_range(count):
                field = metadata[batch_indices[k]]
                image_data = mem_read(field["data_ptr"], storage_state)
                height, width = np.uint32(field["height"]), np.uint32(field["width"])
                if field["mode"] == jpg:
                    buffer = temp_storage[k]
                    _decode_jpeg(image_data, buffer, height, width)
                    image = buffer.reshape(-1)[:3 * height * width].reshape(height, width, 3)
                else:
                    image = image_data.reshape(height, width, 3)
                i, j, h, w = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
                out = destination[k]
                _resize_box(image, i, j, h, w, out)
                if boxes[k, 4]:
                    last = out.shape[1] - 1
                    for x in range(out.shape[1] // 2):
                        for y in range(out.shape[0]):
                            for c in range(3):
                                out[y, x, c], out[y, last - x, c] = out[y, last - x, c], out[y, x, c]
            return destination[:count]

        decode.is_parallel = True
        return decode
