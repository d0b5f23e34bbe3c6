"""attnlab.data.images gathers the image API from the modules that hold it."""

from attnlab.data import digits, fashion_mnist, idx, image_dataset, image_files, image_loader, image_transforms, images


def test_images_re_exports_the_objects_of_their_home_modules():
    homes = [digits, fashion_mnist, idx, image_dataset, image_files, image_loader, image_transforms]
    for name in images.__all__:
        owners = [home for home in homes if name in home.__all__]
        assert len(owners) == 1, f"{name} is exported by {owners}"
        assert getattr(images, name) is getattr(owners[0], name)
    assert set(images.__all__) >= {
        "ImageSpec",
        "ImageSplits",
        "TensorImageLoader",
        "load_image",
        "load_digits",
        "load_fashion_mnist",
        "split_dataset",
        "ImageFolderDataset",
        "FASHION_MNIST_CLASSES",
    }
