"""Photos like ImageNet's: a reference sample of the pretraining domain.

`kft suggest` compares a target dataset's activations with those of images
the ImageNet backbone was trained on, group by group. No ImageNet images can
be had offline, so the reference is random crops of the colour photographs
that ship with scikit-image (an astronaut, a cat, a cup of coffee, a rocket, a
motorcycle) and scikit-learn (a temple in China, a flower): everyday objects
and scenes with ImageNet's colour and texture statistics. Pass your own
folder of photos to `kft suggest --reference` for a closer sample.
"""

import numpy as np
from PIL import Image

from kft.errors import KftError

# skimage.data functions of colour photographs of ImageNet-like subjects
# (the microscopy, astronomy and synthetic images are left out).
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle")


def photos():
    """The source photographs: a list of uint8 `[H, W, 3]` arrays (7 of them)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    found = []
    for name in SKIMAGE_PHOTOS:
        image = getattr(skimage.data, name)()
        # stereo_motorcycle returns (left, right, disparity).
        found.append(image[0] if isinstance(image, tuple) else image)
    found.extend(load_sample_images().images)
    return [np.asarray(image)[..., :3].astype(np.uint8) for image in found]


def images(image_size, count=256, seed=0):
    """`count` random crops of the photos, resized to `image_size`.

    Each crop covers 10 to 100% of a photo's area at an aspect ratio of 3/4
    to 4/3 (the Inception-style crops ImageNet models train on) and is
    flipped left-right half of the time.

    Args:
        image_size: `(height, width)` or one side.
        count: number of crops.
        seed: seeds the crops.

    Returns:
        uint8 `[count, height, width, 3]`.

    Example:
    ```python
    reference = kft.data.datasets.reference_photos.images(96, count=128)
    ```
    """
    height, width = (image_size, image_size) if np.isscalar(image_size) else image_size
    if count < 1:
        raise KftError(f"count must be at least 1, got {count!r}.")
    rng = np.random.default_rng(seed)
    sources = photos()
    crops = np.zeros((count, height, width, 3), np.uint8)
    for index in range(count):
        photo = sources[index % len(sources)]
        rows, cols = photo.shape[:2]
        area = rng.uniform(0.1, 1.0) * rows * cols
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        crop_cols = int(min(cols, round(np.sqrt(area * aspect))))
        crop_rows = int(min(rows, round(np.sqrt(area / aspect))))
        top = rng.integers(0, rows - crop_rows + 1)
        left = rng.integers(0, cols - crop_cols + 1)
        crop = photo[top:top + crop_rows, left:left + crop_cols]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crops[index] = np.asarray(
            Image.fromarray(np.ascontiguousarray(crop)).resize((width, height), Image.BILINEAR))
    return crops
