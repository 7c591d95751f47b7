"""Training the bundled models (`latentbasis train`): seeded, resumable, diffusers format out.

Two objectives, both with AdamW, linear warm-up and an EMA of the weights (the EMA is what ships):
- "epsilon" (U-Nets: digits, digits-text, shapes), DDPM's L_simple (Ho et al. 2020):
      x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,   loss = || eps_theta(x_t, t) - eps ||^2,  t uniform on 0..T-1;
- "flow" (the DiT digits-flow), rectified flow / flow matching (Lipman et al. 2023, Liu et al. 2023, as SD3):
      x_s = (1 - s) x_0 + s eps,   loss = || v_theta(x_s, s) - (eps - x_0) ||^2,  s uniform on (0, 1),
  the network told s * T as its timestep (FlowMatchEulerDiscreteScheduler's convention). Class labels are
  replaced by the null label with probability label_dropout, so classifier-free guidance works.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .atomic import atomic_folder_contents, atomic_path, write_text_atomic
from .data import CAPTION_TEMPLATES, SHAPES_TRAIN_SIZE, caption_vocabulary, digit_caption, digits_images, shapes_images
from .devices import resolve_device
from .errors import LatentBasisError
from .schedules import flow_sigmas
from .text import word_tokenizer
from .validate import check_output_folder, regular_file


@dataclass
class TrainConfig:
    dataset: str = "digits"
    resolution: int = 16
    in_channels: int = 1
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    layers_per_block: int = 1
    norm_num_groups: int = 8
    attention_head_dim: int = 16
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    steps: int = 3000
    batch_size: int = 128
    lr: float = 3e-4
    warmup_steps: int = 200
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 250
    num_threads: int = 0  # 0: torch's default
    device: str = "cpu"   # "cuda" on a GPU machine; the random draws stay on the CPU generator either way
    # text conditioning (digits-text): a CLIP text encoder trained from scratch on the captions
    text: bool = False
    cross_attention_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_max_length: int = 8
    caption_dropout: float = 0.1   # captions replaced by "" so classifier-free guidance works
    # the diffusion transformer (digits-flow): DiTTransformer2DModel, class-conditional, flow matching
    architecture: str = "unet"     # "unet" or "dit"
    objective: str = "epsilon"     # "epsilon" (DDPM) or "flow" (flow matching)
    dit_layers: int = 6
    dit_heads: int = 4
    dit_head_dim: int = 32
    patch_size: int = 2
    num_classes: int = 0           # > 0: class-conditional on the dataset's labels
    label_dropout: float = 0.1     # labels replaced by the null label (num_classes) so guidance works
    flow_shift: float = 1.0


PRESETS: dict[str, TrainConfig] = {
    "digits": TrainConfig(),
    "digits-text": TrainConfig(
        dataset="digits-text", text=True, steps=2000,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")),
    # 32x32 RGB: attention only at 8x8 keeps a step near 0.9 s on 2 CPU cores at batch 64 (14,000 steps: ~4 h).
    "shapes": TrainConfig(
        dataset="shapes", resolution=32, in_channels=3, steps=14000, batch_size=64,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D")),
    # a small DiT over 2x2 patches of 16x16 digits (64 tokens, width 96, 6 blocks, 1.2M parameters), flow
    # matching, 10 classes: 0.2 s a step on 2 CPU cores at batch 64 (6,000 steps: ~20 min; at 3,500 its samples
    # already met the quality targets)
    "digits-flow": TrainConfig(
        dataset="digits-flow", architecture="dit", objective="flow", num_classes=10, dit_layers=6, dit_heads=3,
        dit_head_dim=32, batch_size=64, steps=6000, lr=3e-4, warmup_steps=500),
}


def build_network(cfg: TrainConfig):
    """The denoiser a preset trains: a U-Net, or a DiT."""
    if cfg.architecture == "dit":
        return build_dit(cfg)
    return build_unet(cfg)


def build_dit(cfg: TrainConfig):
    """DiTTransformer2DModel over patch_size x patch_size patches, adaLN-zero conditioning on the timestep and the
    class label (num_classes labels + the null label). diffusers' label embedders drop labels at random with their
    own generator while training; that is switched off here (dropout_prob 0) and done with the run's generator."""
    from diffusers import DiTTransformer2DModel

    net = DiTTransformer2DModel(
        num_attention_heads=cfg.dit_heads, attention_head_dim=cfg.dit_head_dim, in_channels=cfg.in_channels,
        out_channels=cfg.in_channels, num_layers=cfg.dit_layers, sample_size=cfg.resolution,
        patch_size=cfg.patch_size, num_embeds_ada_norm=max(1, cfg.num_classes), norm_num_groups=1)
    for m in net.modules():
        if hasattr(m, "class_embedder"):
            m.class_embedder.dropout_prob = 0.0
    return net


def build_unet(cfg: TrainConfig):
    from diffusers import UNet2DConditionModel, UNet2DModel

    if cfg.text:
        return UNet2DConditionModel(
            sample_size=cfg.resolution, in_channels=cfg.in_channels, out_channels=cfg.in_channels,
            layers_per_block=cfg.layers_per_block, block_out_channels=tuple(cfg.block_out_channels),
            down_block_types=tuple(cfg.down_block_types), up_block_types=tuple(cfg.up_block_types),
            norm_num_groups=cfg.norm_num_groups, attention_head_dim=cfg.attention_head_dim,
            cross_attention_dim=cfg.cross_attention_dim)
    return UNet2DModel(
        sample_size=cfg.resolution,
        in_channels=cfg.in_channels,
        out_channels=cfg.in_channels,
        layers_per_block=cfg.layers_per_block,
        block_out_channels=tuple(cfg.block_out_channels),
        down_block_types=tuple(cfg.down_block_types),
        up_block_types=tuple(cfg.up_block_types),
        norm_num_groups=cfg.norm_num_groups,
        attention_head_dim=cfg.attention_head_dim,
    )


def build_text(cfg: TrainConfig):
    """(tokenizer over the captions' own words, a small CLIPTextModel initialised at random)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = word_tokenizer(caption_vocabulary(), max_length=cfg.text_max_length)
    enc = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=cfg.cross_attention_dim, intermediate_size=2 * cfg.cross_attention_dim,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.text_max_length, pad_token_id=0, bos_token_id=1, eos_token_id=2))
    return tok, enc


def build_scheduler(cfg: TrainConfig):
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    if cfg.objective == "flow":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=cfg.num_train_timesteps, shift=cfg.flow_shift)
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         beta_start=1e-4, beta_end=0.02, prediction_type="epsilon", clip_sample=True)


def load_dataset(cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(images [N, C, R, R] in [-1, 1], labels [N] or None)."""
    if cfg.dataset in ("digits", "digits-text", "digits-flow"):
        x, y = digits_images(cfg.resolution)
        return x, torch.from_numpy(y)
    if cfg.dataset == "shapes":
        x, _ = shapes_images(SHAPES_TRAIN_SIZE, seed=cfg.seed, resolution=cfg.resolution)
        return x, None
    raise LatentBasisError(f"unknown dataset {cfg.dataset!r}; known: {', '.join(PRESETS)}")


def _captions(labels: torch.Tensor, gen: torch.Generator, dropout: float) -> list[str]:
    t = torch.randint(0, len(CAPTION_TEMPLATES), (len(labels),), generator=gen)
    drop = torch.rand(len(labels), generator=gen) < dropout
    return ["" if d else digit_caption(int(y), int(k)) for y, k, d in zip(labels, t, drop)]


# Settings that do not change the sequence of weights: a run may be resumed with other values (e.g. to go on
# for more steps, since the learning rate does not depend on the total).
_RESUMABLE_CHANGES = ("steps", "checkpoint_every", "num_threads", "device")


def _trajectory_settings(config: dict) -> dict:
    """The settings that fix the run; a field missing from an older checkpoint has its default value."""
    full = {**dataclasses.asdict(TrainConfig()), **config}
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in full.items() if k not in _RESUMABLE_CHANGES}


def _atomic_torch_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def read_checkpoint(path: Path, device) -> dict:
    """A training checkpoint, read with torch.load(weights_only=True): tensors, numbers, strings and plain
    containers only, so a planted file cannot run code (anything else is refused with one message)."""
    regular_file(path, "training checkpoint")
    try:
        ckpt = torch.load(path, weights_only=True, map_location=device)
    except Exception as e:  # pickle.UnpicklingError for forbidden globals, corrupt zip, ...
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise LatentBasisError(f"{path} is not a readable training checkpoint (only tensors and plain data are "
                               f"loaded; {first}); remove it to start over") from None
    need = {"unet", "ema", "opt", "gen", "log", "step", "config"}
    if not isinstance(ckpt, dict) or not need <= set(ckpt) or not isinstance(ckpt["step"], int):
        raise LatentBasisError(f"{path} is not a training checkpoint of latentbasis; remove it to start over")
    return ckpt


# What a training run writes in its folder first: an existing folder must hold one of these or nothing.
TRAIN_OUTPUTS = ("checkpoint.pt", "training_log.json")


def train(cfg: TrainConfig, out_dir: str | os.PathLike, progress: bool = True) -> dict:
    """Train (or resume) a model into `out_dir`; returns the training log (losses, seconds).

    `out_dir/checkpoint.pt` holds everything needed to resume bit-for-bit (weights, EMA, optimiser,
    RNG, log); the finished model is written with save_pretrained (EMA weights) beside a model card.
    """
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)

    dev = resolve_device(cfg.device)     # its message says what is wrong, once
    out = check_output_folder(out_dir, "the model folder", earlier=TRAIN_OUTPUTS, what="training run")
    out.mkdir(parents=True, exist_ok=True)
    data, labels = load_dataset(cfg)
    torch.manual_seed(cfg.seed)
    unet = build_network(cfg).to(dev)   # the denoiser: a U-Net, or the DiT
    tokenizer, text_encoder = build_text(cfg) if cfg.text else (None, None)
    if cfg.text:
        text_encoder.to(dev)
    scheduler = build_scheduler(cfg)
    if cfg.objective == "flow":
        flow_levels = flow_sigmas(dict(scheduler.config)).float().to(dev)   # s_t, t = 0..T-1
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if cfg.text else [])
    ema = EMAModel(params, decay=cfg.ema_decay)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    log = {"loss": [], "seconds": 0.0, "config": dataclasses.asdict(cfg)}
    step = 0
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists():
        ckpt = read_checkpoint(ckpt_path, dev)
        if _trajectory_settings(ckpt["config"]) != _trajectory_settings(dataclasses.asdict(cfg)):
            raise LatentBasisError(f"{ckpt_path} was written with other settings; remove it or use another output folder")
        if ckpt["step"] > cfg.steps:
            raise LatentBasisError(f"{ckpt_path} is at step {ckpt['step']}, past the {cfg.steps} steps asked for")
        unet.load_state_dict(ckpt["unet"])
        if cfg.text:
            text_encoder.load_state_dict(ckpt["text_encoder"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["opt"])
        gen.set_state(ckpt["gen"])
        log, step = ckpt["log"], ckpt["step"]
        log["config"] = dataclasses.asdict(cfg)   # the settings it finishes with (steps may have been raised)

    def lr_at(s: int) -> float:
        return cfg.lr * min(1.0, (s + 1) / cfg.warmup_steps)

    unet.train()
    if cfg.text:
        text_encoder.train()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.dataset}", disable=not progress)
    t_start = time.time() - log["seconds"]
    while step < cfg.steps:
        idx = torch.randint(0, len(data), (cfg.batch_size,), generator=gen)
        x0 = data[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, cfg.num_train_timesteps, (cfg.batch_size,), generator=gen)
        lab = None
        if cfg.num_classes:   # the null label num_classes with probability label_dropout
            keep = torch.rand(cfg.batch_size, generator=gen) >= cfg.label_dropout
            lab = torch.where(keep, labels[idx], torch.full_like(labels[idx], cfg.num_classes)).to(dev)
        x0, noise, t = x0.to(dev), noise.to(dev), t.to(dev)
        if cfg.objective == "flow":   # x_s = (1 - s) x0 + s eps at the training sigma of t, target eps - x0
            sig = flow_levels[t].view(-1, *[1] * (x0.dim() - 1))
            xt, target = (1 - sig) * x0 + sig * noise, noise - x0
            pred = unet(xt, timestep=sig.flatten() * cfg.num_train_timesteps, class_labels=lab).sample
        elif cfg.text:
            xt, target = scheduler.add_noise(x0, noise, t), noise
            tok = tokenizer(_captions(labels[idx], gen, cfg.caption_dropout), padding="max_length",
                            max_length=cfg.text_max_length, truncation=True, return_tensors="pt")
            pred = unet(xt, t, encoder_hidden_states=text_encoder(tok.input_ids.to(dev))[0]).sample
        else:
            xt, target = scheduler.add_noise(x0, noise, t), noise
            pred = unet(xt, t).sample
        loss = F.mse_loss(pred, target)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.step(params)
        step += 1
        log["loss"].append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{sum(log['loss'][-50:]) / len(log['loss'][-50:]):.4f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            log["seconds"] = time.time() - t_start
            state = {"unet": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                     "gen": gen.get_state(), "log": log, "step": step, "config": dataclasses.asdict(cfg)}
            if cfg.text:
                state["text_encoder"] = text_encoder.state_dict()
            _atomic_torch_save(state, ckpt_path)
    bar.close()
    ema.copy_to(params)
    unet.eval().to("cpu")
    with atomic_folder_contents(out) as model_dir:   # the finished model's files appear together, or none
        if cfg.text:  # a pipeline folder without a VAE, opened like any SD-style pipeline
            unet.save_pretrained(model_dir / "unet", safe_serialization=True)
            text_encoder.eval().to("cpu").save_pretrained(model_dir / "text_encoder")
            tokenizer.save_pretrained(model_dir / "tokenizer")
            scheduler.save_pretrained(model_dir / "scheduler")
            (model_dir / "model_index.json").write_text(json.dumps({
                "_class_name": "latentbasis.TextPixelPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
                "scheduler": ["diffusers", type(scheduler).__name__]}, indent=1))
        else:
            unet.save_pretrained(model_dir, safe_serialization=True)
            scheduler.save_pretrained(model_dir)
        write_model_card(model_dir, cfg, log, step)
        (model_dir / "training_log.json").write_text(json.dumps(
            {"config": log["config"], "seconds": log["seconds"], "steps": step,
             "loss_every_100": [sum(log["loss"][i:i + 100]) / len(log["loss"][i:i + 100])
                                for i in range(0, len(log["loss"]), 100)]}, indent=1))
    return log


def _caption_templates() -> tuple[str, ...]:
    return CAPTION_TEMPLATES


def _shapes_data_lines(cfg: TrainConfig) -> list[str]:
    return ["Data: latentbasis' own procedural shapes (`latentbasis.data.shapes_images`, seed "
            f"{cfg.seed}, {SHAPES_TRAIN_SIZE:,} images): one anti-aliased square, circle or triangle of one hue on a "
            f"grey background, {cfg.resolution}x{cfg.resolution} RGB in [-1, 1]. The factors (kind, x, y, size, hue, "
            "background) are independent and uniform; see `latentbasis.data.shape_factors`."]


def _architecture_lines(cfg: TrainConfig) -> list[str]:
    if cfg.architecture == "dit":
        width = cfg.dit_heads * cfg.dit_head_dim
        return [f"Model: diffusers `DiTTransformer2DModel`, {cfg.dit_layers} transformer blocks of width {width} "
                f"({cfg.dit_heads} heads of {cfg.dit_head_dim}), {cfg.patch_size}x{cfg.patch_size} patches "
                f"({(cfg.resolution // cfg.patch_size) ** 2} tokens), adaLN-zero conditioning on the timestep and "
                f"the class label ({cfg.num_classes} digits and a null label, dropped with probability "
                f"{cfg.label_dropout} so classifier-free guidance works). Trained with flow matching (rectified flow: "
                "x_s = (1 - s) x_0 + s eps, the network predicts the velocity eps - x_0; "
                f"FlowMatchEulerDiscreteScheduler, shift {cfg.flow_shift}, T = {cfg.num_train_timesteps}); latentbasis "
                "samples with the Euler step on the scheduler's sigmas."]
    return [f"Model: diffusers `{'UNet2DConditionModel' if cfg.text else 'UNet2DModel'}`, block channels "
            f"{list(cfg.block_out_channels)}, blocks {list(cfg.down_block_types)}, {cfg.layers_per_block} layer(s) per "
            f"block; epsilon prediction; DDPM linear betas 1e-4..0.02, T = {cfg.num_train_timesteps} "
            "(scheduler_config.json; latentbasis samples with DDIM, clamping x0_hat to [-1, 1] at each step as the "
            "config's clip_sample asks)."]


def labels_markdown(p: dict) -> str:
    return (f"{p['samples']} class-conditional samples (Euler, 50 steps, classifier-free guidance {p['guidance']}, "
            f"seeds 0..{p['samples'] // len(p['per_label']) - 1} per label), classified by the same real-digit SVC: "
            f"{100 * p['accuracy']:.1f} % show the digit of their label (target >= 90 %). Per label 0-9: "
            f"{', '.join(f'{100 * v:.0f}' for v in p['per_label'])} %.")


def write_model_card(out: Path, cfg: TrainConfig, log: dict, step: int, quality: dict | None = None,
                     prompts: dict | None = None, shapes: dict | None = None, labels: dict | None = None) -> None:
    """README.md in the model folder: data, architecture, steps, loss, quality, how to reproduce."""
    losses = log["loss"]
    last = sum(losses[-200:]) / max(1, len(losses[-200:]))
    lines = [
        f"# {cfg.dataset}: a small {'flow-matching transformer' if cfg.architecture == 'dit' else 'DDPM'} trained "
        "by latentbasis",
        "",
        *(_shapes_data_lines(cfg) if cfg.dataset == "shapes" else [
            "Data: scikit-learn's bundled handwritten digits (`sklearn.datasets.load_digits`, 1,797 real 8x8 images),",
            f"upscaled bilinearly to {cfg.resolution}x{cfg.resolution}, one channel, scaled to [-1, 1]."]),
        "",
        *_architecture_lines(cfg),
        "",
        *([f"Text: a `CLIPTextModel` ({cfg.text_layers} layers, width {cfg.cross_attention_dim}) trained from scratch "
           f"with the U-Net, on captions made from the labels in {len(_caption_templates())} wordings "
           f"({'; '.join(repr(t) for t in _caption_templates())}); the tokenizer is word-level over the captions' own "
           f"vocabulary. Captions are dropped (replaced by \"\") with probability {cfg.caption_dropout}, so "
           "classifier-free guidance works. Saved as a pipeline folder without a VAE.", ""] if cfg.text else []),
        f"Training: {step} steps, batch {cfg.batch_size}, AdamW lr {cfg.lr} ({cfg.warmup_steps} warm-up steps), "
        f"EMA decay {cfg.ema_decay} (the EMA weights ship), seed {cfg.seed}; {log['seconds'] / 60:.1f} min on "
        f"{torch.get_num_threads()} CPU threads" + (f" and {cfg.device}" if cfg.device != "cpu" else "")
        + f". Final loss (mean of the last 200 steps): {last:.4f}.",
        "",
        "Reproduce:",
        "",
        "```bash",
        f"latentbasis train --dataset {cfg.dataset} --out DIR",
        "```",
        "",
        "The run is seeded and resumable (DIR/checkpoint.pt). training_log.json holds the settings and the loss curve.",
    ]
    if quality:
        lines += ["", "## Sample quality", "", quality_markdown(quality)]
    if prompts:
        lines += ["", "## Prompt following", "", prompt_markdown(prompts)]
    if shapes:
        lines += ["", "## Sample quality", "", shapes_markdown(shapes)]
    if labels:
        lines += ["", "## Label following", "", labels_markdown(labels)]
    write_text_atomic(out / "README.md", "\n".join(lines) + "\n")


def quality_markdown(q: dict) -> str:
    sampler = q.get("sampler", "DDIM")
    return (f"{q['samples']} {sampler} samples (50 steps, seeds 0..{q['samples'] - 1}), area-averaged to 8x8 and "
            f"classified by an SVC (Platt-scaled) trained on 80 % of the real digits: mean top-class probability "
            f"{q['confidence']:.3f}, against {q['real_confidence']:.3f} on the held-out real digits through the same "
            f"resize (ratio {q['ratio']:.3f}; target >= 0.90). Classes among the samples: {q['classes']} of 10 "
            f"(histogram {q['histogram']}).")


def prompt_markdown(p: dict) -> str:
    return (f"{p['samples']} samples with classifier-free guidance {p['guidance']} (DDIM, 50 steps), ten digits in "
            f"{len(p['per_wording'])} wordings, classified by the same real-digit SVC: {100 * p['accuracy']:.1f} % "
            f"show the digit their prompt names (target >= 80 %). Per wording: "
            + ", ".join(f"{k!r} {100 * v:.0f} %" for k, v in p["per_wording"].items())
            + f". Per digit 0-9: {', '.join(f'{100 * v:.0f}' for v in p['per_digit'])} %.")


def shapes_markdown(q: dict) -> str:
    h = q["held_out"]
    return (f"Factor reader (`latentbasis.evaluate.shapes_reader`: logistic and linear regression on measured shape "
            f"features, fitted on 4,000 procedural images of seed 1). On 1,000 held-out procedural images (seed 2, "
            f"factors known): kind accuracy {100 * h['kind_accuracy']:.1f} %, R^2 x {h['x_r2']:.4f}, y {h['y_r2']:.4f}, "
            f"size {h['size_r2']:.4f}. On {q['samples']} DDIM samples (50 steps, seeds 0..{q['samples'] - 1}), which "
            f"have no ground truth, each sample's factors are read, re-rendered and compared with the sample: "
            f"{100 * q['recovered']:.1f} % are recovered (the sample holds a shape, and the re-rendering explains >= 90 % "
            f"of its pixel variance; target >= 90 %), mean pixel R^2 {q['pixel_r2_mean']:.3f} (median {q['pixel_r2_median']:.3f}); "
            f"kinds read (square, circle, triangle): {q['kinds']}; the reader's mean kind probability "
            f"{q['kind_probability']:.3f} against {h['kind_probability']:.3f} on procedural images.")
