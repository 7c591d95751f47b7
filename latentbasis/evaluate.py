"""Sample quality of the bundled digits model, judged by a classifier trained on the real load_digits images.

    score = mean over samples of the classifier's top-class probability, for generated samples and for real
    digits passed through the same resize (up to the model's resolution, then area-averaged back to 8x8);
    ratio = score(generated) / score(real).  Every class should also appear among the samples.

What a bundled model was trained on (its training_log.json): dataset_of, training_data.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .data import (CAPTION_TEMPLATES, SHAPE_AREA, digit_caption, digits_images, downsample_to_digits, render_shapes,
                   shapes_images)
from .errors import LatentBasisError
from .sampling import generate
from .loading import load_model
from .train import (PRESETS, labels_markdown, load_dataset, prompt_markdown, quality_markdown, shapes_markdown, train,
                    write_model_card)
from .validate import read_json_object


def digits_classifier(resolution: int = 16):
    """SVC (RBF, Platt-scaled probabilities) fitted on 80 % of the real digits after the same resize round trip as samples;
    the real-digit confidence is measured on the held-out 20 % (a classifier is over-confident on its own
    training images). Returns (classifier, real confidence, real held-out accuracy)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import train_test_split
    from sklearn.svm import SVC

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
    clf, real_conf, real_acc = digits_classifier(model.x_shape[-1])
    xs = torch.cat([generate(model, list(range(s, min(s + batch, seed0 + n))), num_steps=num_steps)
                    for s in range(seed0, seed0 + n, batch)])
    proba = clf.predict_proba(downsample_to_digits(xs))
    pred = proba.argmax(axis=1)
    conf = float(proba.max(axis=1).mean())
    return {"samples": n, "confidence": conf, "real_confidence": real_conf, "real_accuracy": real_acc,
            "ratio": conf / real_conf, "sampler": "Euler (unconditional: the null label)" if model.flow else "DDIM",
            "classes": int(len(np.unique(pred))), "histogram": np.bincount(pred, minlength=10).tolist(),
            "images": xs}


def prompt_following(model, per_prompt: int = 8, guidance: float = 3.0, num_steps: int = 50,
                     templates: tuple[int, ...] = (0, 1, 3)) -> dict:
    """Fraction of samples that the real-digit classifier assigns to the digit their prompt names.

    Prompts: every digit 0..9 in each wording of `templates` (indices into data.CAPTION_TEMPLATES), per_prompt
    samples each (seeds 0..per_prompt-1), classifier-free guidance `guidance`. Returns the overall accuracy,
    per digit and per wording.
    """
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


def label_following(model, per_label: int = 24, guidance: float = 3.0, num_steps: int = 50) -> dict:
    """Fraction of class-conditional samples (seeds 0..per_label-1 for each label, classifier-free guidance
    `guidance` against the null label) that the real-digit classifier assigns to their label; overall, per label."""
    clf, _, _ = digits_classifier(model.x_shape[-1])
    per = np.zeros(model.num_classes)
    for d in range(model.num_classes):
        xs = generate(model, list(range(per_label)), num_steps=num_steps, prompt=str(d), guidance=guidance)
        per[d] = float((clf.predict(downsample_to_digits(xs)) == d).mean())
    return {"accuracy": float(per.mean()), "per_label": per.round(3).tolist(), "guidance": guidance,
            "samples": per_label * model.num_classes}


# ---------------------------------------------------------------- shapes: reading the factors back from pixels

SHAPE_SATURATION = 0.9 * 0.95  # max - min of HSV(h, 0.9, 0.95): a fully covered shape pixel; grey background is 0
SATURATION_FLOOR = 0.1  # coverage below this is tint, not shape: generated backgrounds are rarely exactly grey


def shape_alpha(images: torch.Tensor) -> np.ndarray:
    """Shape coverage [N, R, R] in [0, 1] of RGB images [N, 3, R, R] in [-1, 1].

    c = (max - min over channels) / SHAPE_SATURATION, since the background is grey (equal channels) and the shape
    saturated; alpha = clip((c - SATURATION_FLOOR) / (1 - SATURATION_FLOOR), 0, 1), so that a faint tint spread over
    the background does not add up to shape area. The reader is fitted on the same alpha, so the floor's small
    shrinkage of anti-aliased edges is calibrated away."""
    x = (images.detach().float().numpy() + 1) / 2
    c = (x.max(axis=1) - x.min(axis=1)) / SHAPE_SATURATION
    return np.clip((c - SATURATION_FLOOR) / (1 - SATURATION_FLOOR), 0.0, 1.0)


def shape_measurements(images: torch.Tensor) -> np.ndarray:
    """Model-free features of each image's shape [N, 9]: coverage centroid (x, y), sqrt(area), the half-extent each
    kind would have at that area (square sqrt(A)/2, circle sqrt(A/pi), triangle sqrt(A / (3 sqrt 3 / 4))), and for
    each kind the squared error of that kind rendered at the centroid with that size against the coverage."""
    a = shape_alpha(images)
    N, R = a.shape[0], a.shape[-1]
    g = (np.arange(R) + 0.5) / R
    mass = a.sum(axis=(1, 2)).clip(1e-6)
    cx = (a * g[None, None, :]).sum(axis=(1, 2)) / mass
    cy = (a * g[None, :, None]).sum(axis=(1, 2)) / mass
    area = mass / R ** 2
    sizes = np.stack([np.sqrt(area / a) for a in SHAPE_AREA], axis=1)
    errs = []
    for kind in range(3):
        f = {"kind": np.full(N, kind), "x": cx, "y": cy, "size": sizes[:, kind], "hue": np.zeros(N),
             "background": np.zeros(N)}
        errs.append(((shape_alpha(render_shapes(f, R)) - a) ** 2).mean(axis=(1, 2)))
    return np.column_stack([cx, cy, np.sqrt(area), sizes, np.stack(errs, 1)])


def shapes_reader(n: int = 4000, seed: int = 1, resolution: int = 32):
    """A small factor reader fitted on procedural shapes (seed 1: not the training set's seed 0): a logistic
    regression for the kind and a linear regression for (x, y, size), both on shape_measurements."""
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    images, f = shapes_images(n, seed=seed, resolution=resolution)
    X = shape_measurements(images)
    kind = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X, f["kind"])
    reg = LinearRegression().fit(_reg_features(X, f["kind"]), np.column_stack([f["x"], f["y"], f["size"]]))
    return kind, reg


def _reg_features(X: np.ndarray, kind: np.ndarray) -> np.ndarray:
    return np.column_stack([X[:, :3], X[np.arange(len(X)), 3 + kind]])


def read_shapes(reader, images: torch.Tensor) -> dict[str, np.ndarray]:
    """Factors of images [N, 3, R, R] read by a shapes_reader: kind (+ its probability), x, y, size, and hue and
    background read from the pixels (mean hue where coverage > 0.5, mean grey where coverage < 0.05)."""
    from matplotlib.colors import rgb_to_hsv

    kind_model, reg = reader
    X = shape_measurements(images)
    proba = kind_model.predict_proba(X)
    kind = proba.argmax(axis=1)
    xys = reg.predict(_reg_features(X, kind))
    a = shape_alpha(images)
    rgb = ((images.detach().float().numpy() + 1) / 2).clip(0, 1).transpose(0, 2, 3, 1)
    hsv = rgb_to_hsv(rgb)
    hue, bg = np.zeros(len(a)), np.zeros(len(a))
    for i in range(len(a)):
        fg, back = a[i] > 0.5, a[i] < 0.05
        h = hsv[i][..., 0][fg] if fg.any() else np.zeros(1)
        hue[i] = (np.angle(np.exp(2j * np.pi * h).mean()) / (2 * np.pi)) % 1.0   # circular mean
        bg[i] = rgb[i][back].mean() if back.any() else rgb[i].mean()
    return {"kind": kind, "kind_probability": proba.max(axis=1), "x": xys[:, 0], "y": xys[:, 1],
            "size": xys[:, 2], "hue": hue, "background": bg}


def _r2(y, p) -> float:
    y, p = np.asarray(y, float), np.asarray(p, float)
    return float(1 - ((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum())


MIN_SHAPE_AREA = 0.5 * SHAPE_AREA[2] * 0.10 ** 2  # half the smallest shape the generator draws


def recovery(reader, images: torch.Tensor) -> tuple[dict, np.ndarray, np.ndarray]:
    """(factors read, pixel R^2 of their re-rendering against each image, recovered [N] bool).

    pixel R^2 = 1 - ||render(read(x)) - x||^2 / ||x - mean(x)||^2; an image is recovered when it is >= 0.9 and the
    image holds a shape at all (coverage area >= MIN_SHAPE_AREA: a blank image is not a recovered shape)."""
    read = read_shapes(reader, images)
    again = render_shapes({k: read[k] for k in ("kind", "x", "y", "size", "hue", "background")}, images.shape[-1])
    err = ((again - images) ** 2).flatten(1).sum(1)
    var = ((images - images.flatten(1).mean(1)[:, None, None, None]) ** 2).flatten(1).sum(1)
    pix_r2 = (1 - err / var.clamp(min=1e-12)).numpy()
    area = shape_alpha(images).mean(axis=(1, 2))
    return read, pix_r2, (pix_r2 >= 0.9) & (area >= MIN_SHAPE_AREA)


def shapes_quality(model, n: int = 256, num_steps: int = 50, batch: int = 128, reader=None) -> dict:
    """Sample quality of a `shapes` model, read back with the factor reader.

    On held-out procedural images (seed 2, ground truth known): kind accuracy and R^2 of x, y, size.
    On n DDIM samples (seeds 0..n-1; no ground truth): each sample's factors are read, re-rendered and compared
    with the sample. A sample counts as recovered when the re-rendering explains at least 90 % of its pixel variance
    (pixel R^2 >= 0.9), which a wrong kind, position or size cannot do. Reported: the fraction recovered, the mean
    pixel R^2, the kinds found, and the reader's mean kind probability against the same on procedural images.
    """
    reader = reader or shapes_reader(resolution=model.x_shape[-1])
    R = model.x_shape[-1]
    test, f = shapes_images(1000, seed=2, resolution=R)
    got = read_shapes(reader, test)
    held_out = {"kind_accuracy": float((got["kind"] == f["kind"]).mean()),
                **{f"{k}_r2": _r2(f[k], got[k]) for k in ("x", "y", "size")},
                "kind_probability": float(got["kind_probability"].mean())}
    xs = torch.cat([generate(model, list(range(s, min(s + batch, n))), num_steps=num_steps)
                    for s in range(0, n, batch)])
    read, pix_r2, ok = recovery(reader, xs)
    return {"samples": n, "held_out": held_out, "recovered": float(ok.mean()),
            "pixel_r2_mean": float(pix_r2.mean()), "pixel_r2_median": float(np.median(pix_r2)),
            "kind_probability": float(read["kind_probability"].mean()),
            "kinds": np.bincount(read["kind"], minlength=3).tolist(), "images": xs, "read": read}


def quality_judge(model):
    """A score of generated images [n, *x] for a bundled model's data (None for any other model): the digits
    classifier's mean top-class probability (digits, digits-text, digits-flow), or the fraction of samples the
    shapes factor reader recovers (shapes). Used by the report's teleportation measurement."""

    dataset = dataset_of(model)
    if dataset in ("digits", "digits-text", "digits-flow"):
        clf, _, _ = digits_classifier(model.x_shape[-1])
        return lambda xs: float(clf.predict_proba(downsample_to_digits(xs.float())).max(axis=1).mean())
    if dataset == "shapes":
        reader = shapes_reader(resolution=model.x_shape[-1])
        return lambda xs: float(recovery(reader, xs.float())[2].mean())
    return None


def card_checks(model, cfg) -> tuple[dict, str]:
    """The quality checks of a freshly trained bundled model for its card (train.write_model_card's keyword
    arguments), by its dataset: the shapes factor reader, label following of a class-conditional model, prompt
    following of a text model, else the digits judge. Returns (the checks, their text in Markdown)."""
    if cfg.dataset == "shapes":
        q = shapes_quality(model)
        return {"shapes": q}, shapes_markdown(q)
    if cfg.num_classes:
        q, p = digits_quality(model), label_following(model)
        return {"quality": q, "labels": p}, quality_markdown(q) + "\n" + labels_markdown(p)
    if cfg.text:
        p = prompt_following(model)
        return {"prompts": p}, prompt_markdown(p)
    q = digits_quality(model)
    return {"quality": q}, quality_markdown(q)


def train_bundled(dataset: str, out: str | Path, *, steps: int | None = None, device: str = "cpu",
                  progress: bool = True, evaluate: bool = True) -> str:
    """Train the preset of a bundled dataset (train.PRESETS; `steps` overrides its number of steps) into the model
    folder `out`, then, with `evaluate`, check the result's quality (card_checks) and write its model card. Returns
    the checks in Markdown ("" without evaluate)."""
    if dataset not in PRESETS:
        raise LatentBasisError(f"unknown dataset {dataset!r}; available: {', '.join(PRESETS)}")
    cfg = replace(PRESETS[dataset], steps=steps or PRESETS[dataset].steps, device=device)
    log = train(cfg, out, progress=progress)
    if not evaluate:
        return ""
    checks, text = card_checks(load_model(out), cfg)
    write_model_card(Path(out), cfg, log, cfg.steps, **checks)
    return text


# ---------------------------------------------------------------- what a bundled model was trained on

def _training_config(model) -> dict | None:
    """The training config of a model latentbasis trained (its training_log.json), or None."""
    if not getattr(model, "path", None):
        return None
    log = Path(model.path) / "training_log.json"
    if not log.exists():
        return None

    try:
        cfg = read_json_object(log, "training log")["config"]
    except (LatentBasisError, KeyError):
        return None
    return cfg if isinstance(cfg, dict) else None


def dataset_of(model) -> str | None:
    """The name of the bundled dataset a model was trained on (digits, shapes, ...), or None."""
    cfg = _training_config(model)
    return cfg.get("dataset") if cfg and cfg.get("dataset") in PRESETS else None


def training_data(model) -> torch.Tensor | None:
    """The images a bundled model was trained on ([N, *x_shape] in [-1, 1]), from its training_log.json, or None
    (a user's checkpoint, or a latent model: the data PCA overlay then is left out)."""
    if model.x_is_latent or dataset_of(model) is None:
        return None

    cfg = _training_config(model)
    settings = {"dataset": cfg["dataset"], "seed": int(cfg.get("seed", 0)), "resolution": model.x_shape[-1]}
    return load_dataset(replace(PRESETS[cfg["dataset"]], **settings))[0]
