from collections import Counter

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from harclip.config import SyntheticConfig
from harclip.download import write_synthetic
from harclip.har import CLASS_NAMES, read_labels_csv
from harclip.synthetic import generate


def _arrays(images):
    return np.stack([np.asarray(image) for _, image in images])


def test_generator_is_deterministic_for_a_seed_and_differs_across_seeds():
    first, again, other = (list(generate(2, 48, seed)) for seed in (7, 7, 8))
    assert [label for label, _ in first] == [label for label, _ in again]
    assert np.array_equal(_arrays(first), _arrays(again))
    assert not np.array_equal(_arrays(first), _arrays(other))


def test_written_set_is_balanced_over_all_15_classes_in_the_kaggle_layout(tmp_path):
    count, classes = write_synthetic(SyntheticConfig(images_per_class=3, image_size=40, seed=0),
                                     tmp_path)
    assert classes == list(CLASS_NAMES)
    rows = read_labels_csv(tmp_path / "Training_set.csv")
    assert count == len(rows) == 45
    assert Counter(row.label for row in rows) == {name: 3 for name in CLASS_NAMES}
    assert all((tmp_path / "train" / row.filename).read_bytes()[:2] == b"\xff\xd8"
               for row in rows)  # real JPEG files


def _mean_rgb_probe(features, labels):
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=100.0, max_iter=5000))
    return cross_val_score(probe, features, labels, cv=5).mean()


def test_mean_colour_says_nothing_about_the_class():
    images = list(generate(40, 48, seed=1))
    labels = np.array([CLASS_NAMES.index(label) for label, _ in images])
    mean_rgb = _arrays(images).reshape(len(images), -1, 3).mean(axis=1) / 255.0
    assert _mean_rgb_probe(mean_rgb, labels) <= 0.15

    # The probe is not blind: had half of each image a colour fixed per class (a bed always
    # drawn in one colour, say), it would read the class well above the 15 % bar.
    class_colour = np.random.default_rng(0).uniform(0, 1, (len(CLASS_NAMES), 3))
    leaky = 0.5 * mean_rgb + 0.5 * class_colour[labels]
    assert _mean_rgb_probe(leaky, labels) > 0.3
