import numpy as np
import pytest
from sklearn.datasets import load_digits

from noisecraft.metrics import classifier
from noisecraft.metrics.classifier import (
    class_report,
    classifier_features,
    classify,
    load_classifier,
    prepare_classifier,
)
from noisecraft.metrics.fid import fid_from_features
from noisecraft.metrics.images import load_labelled_images


def _digits_uint8():
    digits = load_digits()
    return np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None], digits.target


def _held_out_indices(n: int) -> np.ndarray:
    # the split _train_digits uses (seed 0): the first 360 of a fixed permutation are never trained on
    return np.random.default_rng(0).permutation(n)[:360]


def test_held_out_accuracy_is_high():
    images, labels = _digits_uint8()
    held_out = _held_out_indices(len(images))
    predicted, confidence = classify(images[held_out], dataset="digits")
    # a 64-unit MLP on raw pixels reaches ~97-98% on held-out digits; 0.95 leaves room for seeds
    assert (predicted == labels[held_out]).mean() > 0.95
    assert confidence.shape == (360,) and np.all((confidence > 0) & (confidence <= 1))


def test_real_digits_cover_all_classes_and_noise_covers_none():
    images, _ = _digits_uint8()
    real = class_report(images, dataset="digits")
    assert real["num_classes_covered"] == 10
    assert sum(real["class_histogram"]) == len(images)
    assert real["mean_confidence"] > 0.9
    noise = np.random.default_rng(1).integers(0, 256, size=(200, 8, 8, 1), dtype=np.uint8)
    report = class_report(noise, dataset="digits")
    # outlier exposure trains noise towards the uniform 1/10; a plain MLP would say ~0.95 here
    assert report["mean_confidence"] < 0.4
    assert report["num_classes_covered"] <= 1
    assert report["fraction_confident"] < 0.05


def test_resized_and_rgb_inputs_classify_the_same_digit():
    images, labels = _digits_uint8()
    subset = images[:300]
    upscaled = np.repeat(np.repeat(subset, 4, axis=1), 4, axis=2)  # 32x32, area-averaged back exactly
    rgb = np.repeat(subset, 3, axis=3)
    base, _ = classify(subset)
    assert np.array_equal(classify(upscaled)[0], base)
    assert np.array_equal(classify(rgb)[0], base)
    assert (base == labels[:300]).mean() > 0.95


def test_features_are_float64_hidden_activations():
    images, _ = _digits_uint8()
    feats = classifier_features(images[:50])
    assert feats.dtype == np.float64 and feats.shape == (50, 64)
    assert np.all(feats >= 0)  # ReLU outputs


def test_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("NOISECRAFT_CACHE", str(tmp_path))
    load_classifier.cache_clear()
    try:
        trained = load_classifier("digits")
        files = list((tmp_path / "classifiers").glob("digits-*.safetensors"))
        assert len(files) == 1
        load_classifier.cache_clear()
        reloaded = load_classifier("digits")
        images, _ = _digits_uint8()
        assert np.array_equal(trained.predict(images[:100])[0], reloaded.predict(images[:100])[0])
        assert reloaded.meta["held_out_accuracy"] == trained.meta["held_out_accuracy"]
    finally:
        load_classifier.cache_clear()


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="uint8"):
        classify(np.zeros((4, 8, 8, 1), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        classify(np.zeros((4, 8, 8, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="empty"):
        classify(np.zeros((0, 8, 8, 1), dtype=np.uint8))
    with pytest.raises(ValueError, match="cifar"):
        classifier.load_classifier("cifar")
    with pytest.raises(ValueError, match="threshold"):
        class_report(np.zeros((4, 8, 8, 1), dtype=np.uint8), threshold=1.5)


@pytest.mark.slow
def test_mnist_cnn_accuracy_coverage_and_classifier_fid(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("NOISECRAFT_CACHE", str(tmp_path))
    load_classifier.cache_clear()
    mnist = f"{shared_data}/mnist"
    try:
        with pytest.raises(FileNotFoundError, match="prepare_classifier"):
            load_classifier("mnist")
        prepare_classifier("mnist", data=mnist)  # one epoch: ~10-35 s on one CPU core
        clf = load_classifier("mnist")
        # one epoch of this CNN reaches ~97.5% on the 10 000 test digits
        assert clf.meta["held_out_accuracy"] > 0.95
        test, labels = load_labelled_images(mnist, n=1000, split="test")
        train, _ = load_labelled_images(mnist, n=1000, split="train")
        predicted, _ = classify(test, dataset="mnist")
        assert (predicted == labels).mean() > 0.95
        noise = np.random.default_rng(0).integers(0, 256, test.shape, dtype=np.uint8)
        assert class_report(test, dataset="mnist")["num_classes_covered"] == 10
        assert class_report(noise, dataset="mnist")["mean_confidence"] < 0.4
        # classifier-FID: MNIST test vs train is far below MNIST vs noise
        f_train, f_test, f_noise = (classifier_features(a, "mnist") for a in (train, test, noise))
        assert 20 * fid_from_features(f_test, f_train) < fid_from_features(f_noise, f_train)
    finally:
        load_classifier.cache_clear()


def test_spectrogram_classifier_reads_which_band_is_loud():
    """Class k is a loud band of mel rows 4k..4k+3 over a quiet, noisy floor, heard at a random
    time: a task any working fit solves; shuffled labels must leave it at chance."""
    import torch

    from noisecraft.metrics.classifier import fit_spectrogram_classifier

    gen = torch.Generator().manual_seed(0)

    def make(n):
        labels = torch.arange(n) % 4
        x = -0.8 + 0.1 * torch.randn(n, 1, 16, 16, generator=gen)
        for i, k in enumerate(labels.tolist()):
            start = int(torch.randint(0, 8, (), generator=gen))
            x[i, 0, 4 * k:4 * k + 4, start:start + 8] = 0.6
        return x, labels.numpy()

    x, y = make(200)
    clf = fit_spectrogram_classifier(x, y, epochs=4)
    x_test, y_test = make(80)
    probs, feats = clf.predict_spectrograms(x_test)
    assert (probs.argmax(axis=1) == y_test).mean() == 1.0
    assert probs.shape == (80, 4) and feats.shape == (80, 128)
    shuffled = fit_spectrogram_classifier(x, np.random.default_rng(0).permutation(y), epochs=4)
    # 80 test examples, 4 classes: chance is 0.25 ± 0.05; a learnt rule would give ~1
    assert (shuffled.predict_spectrograms(x_test)[0].argmax(axis=1) == y_test).mean() < 0.5
    with pytest.raises(ValueError, match="reads"):
        clf.predict_spectrograms(torch.zeros(2, 1, 16, 32))
