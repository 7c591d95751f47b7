"""Sample quality of the bundled digits model, judged by a classifier trained on the real load_digits images.

    score = mean over samples of the classifier's top-class probability, for generated samples and for real
    digits passed through the same resize (up to the model's resolution, then area-averaged back to 8x8);
    ratio = score(generated) / score(real).  Every class should also appear among the samples.
"""
from __future__ import annotations

import numpy as np
import torch


def digits_classifier(resolution: int = 16):
    """SVC (RBF, Platt-scaled probabilities) fitted on 80 % of the real digits after the same resize round trip as samples;
    the real-digit confidence is measured on the held-out 20 % (a classifier is over-confident on its own
    training images). Returns (classifier, real confidence, real held-out accuracy)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import train_test_split
    from sklearn.svm import SVC

    from .data import digits_images, downsample_to_digits

    images, labels = digits_images(resolution)
    X = downsample_to_digits(images)
    Xtr, Xte, ytr, yte = train_test_split(X, labels, test_size=0.2, random_state=0, stratify=labels)
    # Platt-scaled SVC probabilities (what SVC(probability=True) gave, in the form scikit-learn now asks for)
    clf = CalibratedClassifierCV(SVC(gamma=0.001, C=10.0), method="sigmoid", cv=5, ensemble=False).fit(Xtr, ytr)
    proba = clf.predict_proba(Xte)
    return clf, float(proba.max(axis=1).mean()), float((proba.argmax(axis=1) == yte).mean())


def digits_quality(model, n: int = 256, num_steps: int = 50, seed0: int = 0, batch: int = 128) -> dict:
    """{'samples', 'confidence', 'real_confidence', 'real_accuracy', 'ratio', 'classes', 'histogram', 'images'}
    for n DDIM samples (seeds seed0 .. seed0 + n - 1)."""
    from .data import downsample_to_digits
    from .sampling import generate

    clf, real_conf, real_acc = digits_classifier(model.x_shape[-1])
    xs = torch.cat([generate(model, list(range(s, min(s + batch, seed0 + n))), num_steps=num_steps)
                    for s in range(seed0, seed0 + n, batch)])
    proba = clf.predict_proba(downsample_to_digits(xs))
    pred = proba.argmax(axis=1)
    conf = float(proba.max(axis=1).mean())
    return {"samples": n, "confidence": conf, "real_confidence": real_conf, "real_accuracy": real_acc,
            "ratio": conf / real_conf,
            "classes": int(len(np.unique(pred))), "histogram": np.bincount(pred, minlength=10).tolist(),
            "images": xs}


def prompt_following(model, per_prompt: int = 8, guidance: float = 3.0, num_steps: int = 50,
                     templates: tuple[int, ...] = (0, 1, 3)) -> dict:
    """Fraction of samples that the real-digit classifier assigns to the digit their prompt names.

    Prompts: every digit 0..9 in each wording of `templates` (indices into data.CAPTION_TEMPLATES), per_prompt
    samples each (seeds 0..per_prompt-1), classifier-free guidance `guidance`. Returns the overall accuracy,
    per digit and per wording.
    """
    from .data import CAPTION_TEMPLATES, digit_caption, downsample_to_digits
    from .sampling import generate

    clf, _, _ = digits_classifier(model.x_shape[-1])
    per_digit = np.zeros(10)
    per_template = {CAPTION_TEMPLATES[t]: 0.0 for t in templates}
    for t in templates:
        for d in range(10):
            xs = generate(model, list(range(per_prompt)), num_steps=num_steps, prompt=digit_caption(d, t),
                          guidance=guidance)
            hits = float((clf.predict(downsample_to_digits(xs)) == d).mean())
            per_digit[d] += hits / len(templates)
            per_template[CAPTION_TEMPLATES[t]] += hits / 10
    return {"accuracy": float(per_digit.mean()), "per_digit": per_digit.round(3).tolist(),
            "per_wording": {k: round(v, 3) for k, v in per_template.items()}, "guidance": guidance,
            "samples": per_prompt * 10 * len(templates)}
