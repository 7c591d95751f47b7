"""Bad input, tried as a careless or hostile user would: every case gets one line on stderr (or one message in the
app), exit code 2, and leaves every file that was there byte-identical with nothing new written.

Most cases run in this process through the CLI's entry point (fast); a handful through a real subprocess; the
kill tests interrupt real processes while they write.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from latentbasis.cli import main
from latentbasis.atomic import WorkRoot
from latentbasis.errors import without_paths

MISSING = "MISSING"


# ---------------------------------------------------------------- the workspace every case starts from

@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_unet_dir, other_unet_dir):
    """A folder of inputs and earlier outputs (all must survive every case), built once."""
    from PIL import Image

    from latentbasis import load_model
    from latentbasis.basis import latent_basis
    from latentbasis.basisfile import basis_metadata, save_basis

    d = tmp_path_factory.mktemp("ws")
    m = load_model(str(tiny_unet_dir), device="cpu")
    x = torch.randn(m.x_shape, generator=torch.Generator().manual_seed(0))
    b = latent_basis(m, x, timestep=599, k=2)
    save_basis(b, d / "basis.safetensors")
    other = load_model(str(other_unet_dir), device="cpu")
    save_basis(latent_basis(other, x, timestep=599, k=2), d / "other.safetensors")
    from safetensors.torch import save_file

    def tampered(name, **changes):
        tensors = {n: getattr(b, n).clone().contiguous() for n in ("latent", "tangent", "singular_values", "point")}
        meta = basis_metadata(b)
        for key, value in changes.items():
            if key in tensors:
                tensors[key] = value
            else:
                meta[key] = value
        save_file(tensors, str(d / name), metadata=meta)

    tampered("nan.safetensors", latent=torch.full_like(b.latent, float("nan")))
    tampered("k99.safetensors", k="99")
    tampered("notunit.safetensors", latent=b.latent * 3)
    tampered("badresid.safetensors", residuals="[1, 2, 3]")
    tampered("badtimestep.safetensors", timestep="-5")
    tampered("f64.safetensors", singular_values=b.singular_values.double())
    shutil.copy(d / "basis.safetensors", d / "basis_named.png")            # a basis file under a picture's name
    (d / "corrupt.safetensors").write_bytes(b"\x00garbage")
    (d / "truncated.safetensors").write_bytes((d / "basis.safetensors").read_bytes()[:200])
    (d / "empty.png").write_bytes(b"")
    (d / "notes.png").write_text("not an image")
    Image.fromarray((np.random.default_rng(0).random((12, 12)) * 255).astype("uint8"), "L").save(d / "grey.png")
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(d / "tiny.png")
    Image.fromarray(np.zeros((10, 100), np.uint8)).save(d / "long.png")
    frames = [Image.new("L", (16, 16), i * 60) for i in range(3)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:])
    Image.new("L", (8000, 6000)).save(d / "bomb.png")                      # 48 million pixels, a few kB
    (d / "cut.png").write_bytes((d / "grey.png").read_bytes()[:60])
    (d / "out.png").write_bytes(b"an earlier output")
    (d / "out.json").write_text("{}")
    (d / "a_folder").mkdir()
    (d / "notes_folder").mkdir()                                           # a folder of the user's own files
    (d / "notes_folder" / "notes.txt").write_text("mine")
    base_recipe = {"format": "latentbasis.recipe/1", "model": str(tiny_unet_dir), "seed": 1, "num_steps": 4,
                   "timestep": 599, "t_fraction": 0.6, "k": 2, "n_iter": 1, "strengths": [-1.0, 1.0]}
    for name, changes in {
        "recipe_ok": {}, "recipe_nan": {"strengths": "NaN"}, "recipe_niter": {"n_iter": 10**12},
        "recipe_steps": {"num_steps": 10**12}, "recipe_ktype": {"k": "four"}, "recipe_unknown": {"colour": "red"},
        "recipe_format": {"format": "other/1"}, "recipe_both": {"image": str(d / "grey.png")},
        "recipe_t": {"timestep": 5000}, "recipe_dtype": {"dtype": "float8"}, "recipe_combo": {"combination": {"x": 1}},
        "recipe_model": {"model": str(d / "nope")}, "recipe_method": {"method": "sideways"},
        "recipe_basis_hash": {"basis_file": str(d / "basis.safetensors"), "basis_sha256": "0" * 64},
        "recipe_image_hash": {"seed": None, "image": str(d / "grey.png"), "image_sha256": "f" * 64},
        "recipe_seed": {"seed": -3}, "recipe_bool": {"keep_norm": "yes"}, "recipe_strength_big": {"strengths": [1e9]},
    }.items():
        text = json.dumps({**base_recipe, **changes}).replace('"NaN"', "NaN")
        (d / f"{name}.json").write_text(text)
    (d / "recipe_list.json").write_text("[1, 2]")
    ok = json.dumps({**base_recipe})
    (d / "recipe_key_twice.json").write_text(ok[:-1] + ', "seed": 2}')           # which seed?
    (d / "recipe_overflow.json").write_text(ok[:-1] + ', "scale": 1e400}')       # a float that parses to inf
    (d / "recipe_broken.json").write_text("{ nope")
    bad = d / "bad_models"
    for name, index in {"evil_index": {"unet": ["os", "system"]}, "evil_config": None, "degenerate": None,
                        "sched_list": None, "corrupt_weights": None, "huge_x": None, "many_t": None,
                        "flow_pred": None, "half_weights": None}.items():
        md = bad / name
        shutil.copytree(tiny_unet_dir, md)
        if name == "evil_index":
            (md / "unet").mkdir()
            (md / "scheduler").mkdir()
            shutil.copy(md / "scheduler_config.json", md / "scheduler" / "scheduler_config.json")
            (md / "model_index.json").write_text(json.dumps({"_class_name": "X", **index}))
        elif name == "evil_config":
            cfg = json.loads((md / "config.json").read_text())
            (md / "config.json").write_text(json.dumps({**cfg, "_class_name": "eval"}))
        elif name == "degenerate":
            cfg = json.loads((md / "scheduler_config.json").read_text())
            (md / "scheduler_config.json").write_text(json.dumps({**cfg, "beta_start": 0.5, "beta_end": 2.0}))
        elif name == "sched_list":
            (md / "scheduler_config.json").write_text("[]")
        elif name == "huge_x":
            cfg = json.loads((md / "config.json").read_text())
            (md / "config.json").write_text(json.dumps({**cfg, "sample_size": 10**6}))
        elif name == "half_weights":           # a float16 checkpoint of the same model
            from safetensors.torch import load_file

            w16 = {k: v.half() for k, v in load_file(md / "diffusion_pytorch_model.safetensors").items()}
            save_file(w16, str(md / "diffusion_pytorch_model.safetensors"))
        elif name in ("many_t", "flow_pred"):
            cfg = json.loads((md / "scheduler_config.json").read_text())
            cfg.update({"num_train_timesteps": 10**9} if name == "many_t" else {"prediction_type": "flow"})
            (md / "scheduler_config.json").write_text(json.dumps(cfg))
        else:
            (md / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    (bad / "empty").mkdir()
    return d


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else None) for p in sorted(d.rglob("*"))}


def run_main(args, capsys):
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:          # argparse's usage errors
        rc = e.code
    cap = capsys.readouterr()
    return rc, [ln for ln in cap.err.splitlines() if ln.strip()]


# ---------------------------------------------------------------- the CLI, in this process

def cli_cases(m, o, w):
    """(name, argv, what the message must say). m: the tiny model, o: the other model, w: the workspace."""
    B = ["basis", "--model", m, "--steps", "3", "--k", "2", "--quiet", "--out", w / "new.safetensors", "--png", ""]
    E = ["edit", "--model", m, "--steps", "3", "--k", "2", "--n-iter", "1", "--quiet", "--out", w / "new.png"]
    R = ["report", "--model", m, "--samples", "2", "--timesteps", "2", "--k", "2", "--steps", "3", "--quiet",
         "--out", w / "new_report"]
    bad = w / "bad_models"
    return [
        ("k_zero", B + ["--k", "0"], "--k = 0 is out of range"),
        ("k_above_dimension", B + ["--k", "65"], "out of range"),
        ("k_above_ceiling", B + ["--k", "5000"], "out of range [1, 1024]"),
        ("k_not_a_number", B + ["--k", "four"], "invalid int"),
        ("t_above_one", B + ["--t", "1.5"], "out of range"),
        ("t_negative", B + ["--t", "-0.1"], "out of range"),
        ("t_nan", B + ["--t", "nan"], "finite"),
        ("timestep_too_large", B + ["--timestep", "1000"], "outside the schedule"),
        ("timestep_negative", B + ["--timestep", "-1"], "outside the schedule"),
        ("seed_negative", B + ["--seed", "-1"], "out of range"),
        ("seed_too_large", B + ["--seed", str(2**64)], "out of range"),
        ("steps_one", B + ["--steps", "1"], "out of range"),
        ("steps_unbounded", B + ["--steps", "100000"], "[2, 1000]"),
        ("tol_nan", B + ["--tol", "nan"], "finite"),
        ("tol_zero", B + ["--tol", "0"], "out of range"),
        ("tol_above_one", B + ["--tol", "1.5"], "out of range"),
        ("tol_inf", B + ["--tol", "inf"], "finite"),
        ("guidance_nan", B + ["--guidance", "nan"], "finite"),
        ("guidance_negative", B + ["--guidance", "-1"], "out of range"),
        ("guidance_huge", B + ["--guidance", "1e9"], "out of range"),
        ("model_missing", ["basis", "--model", w / "nope", "--out", w / "new.safetensors"], "not found"),
        ("model_empty_folder", ["basis", "--model", bad / "empty", "--out", w / "n.safetensors"], "not a diffusers"),
        ("model_corrupt_weights", ["basis", "--model", bad / "corrupt_weights", "--out", w / "n.safetensors"],
         "could not load"),
        ("model_index_names_os_system", ["basis", "--model", bad / "evil_index", "--out", w / "n.safetensors"],
         "does not load"),
        ("config_names_eval", ["basis", "--model", bad / "evil_config", "--out", w / "n.safetensors"],
         "does not load"),
        ("degenerate_schedule", ["basis", "--model", bad / "degenerate", "--out", w / "n.safetensors"],
         "degenerate noise schedule"),
        ("scheduler_config_a_list", ["basis", "--model", bad / "sched_list", "--out", w / "n.safetensors"],
         "not a JSON object"),
        ("prompt_on_pixel_model", B + ["--prompt", "a cat"], "not text-conditioned"),
        ("prompt_with_nul", B + ["--prompt", "a\x00b"], "NUL"),
        ("init_corrupt", B + ["--init", w / "corrupt.safetensors"], "not a readable basis file"),
        ("init_truncated", B + ["--init", w / "truncated.safetensors"], "not a readable basis file"),
        ("init_missing", B + ["--init", w / "nope.safetensors"], "does not exist"),
        ("init_other_model", B + ["--init", w / "other.safetensors"], "computed with model"),
        ("init_nan", B + ["--init", w / "nan.safetensors"], "NaN"),
        ("init_header_k99", B + ["--init", w / "k99.safetensors"], "k = '99'"),
        ("init_not_unit", B + ["--init", w / "notunit.safetensors"], "not unit vectors"),
        ("init_bad_residuals", B + ["--init", w / "badresid.safetensors"], "residuals"),
        ("init_bad_timestep", B + ["--init", w / "badtimestep.safetensors"], "timestep"),
        ("init_float64", B + ["--init", w / "f64.safetensors"], "float64"),
        ("out_is_init", B[:-4] + ["--init", w / "basis.safetensors", "--out", w / "basis.safetensors"],
         "is the input --init"),
        ("out_is_image", B[:-4] + ["--image", w / "grey.png", "--out", w / "grey.png"], "is the input --image"),
        ("png_is_out", B[:-2] + ["--png", w / "new.safetensors"], "same file"),
        ("png_is_init", B[:-2] + ["--png", w / "basis.safetensors", "--init", w / "basis.safetensors"],
         "is the input --init"),
        ("png_folder_missing", B[:-2] + ["--png", w / "nodir" / "p.png"], "does not exist"),
        ("out_folder_missing", B[:-4] + ["--out", w / "nodir" / "b.safetensors"], "does not exist"),
        ("out_is_a_folder", B[:-4] + ["--out", w / "a_folder"], "is a folder"),
        ("image_missing", B + ["--image", w / "nope.png"], "does not exist"),
        ("image_is_text", B + ["--image", w / "notes.png"], "not a readable image"),
        ("image_empty", B + ["--image", w / "empty.png"], "not a readable image"),
        ("image_truncated", B + ["--image", w / "cut.png"], "not a readable image"),
        ("image_too_small", B + ["--image", w / "tiny.png"], "too small"),
        ("image_too_elongated", B + ["--image", w / "long.png"], "too elongated"),
        ("image_animated", B + ["--image", w / "anim.gif"], "animated"),
        ("image_decompression_bomb", B + ["--image", w / "bomb.png"], "40,000,000"),
        ("device_tpu", B + ["--device", "tpu"], "not one of cpu"),
        ("dtype_float8", B + ["--dtype", "float8"], "invalid choice"),
        ("guidance_scale_without_embedding", B + ["--guidance-scale", "3"], "takes no guidance scale"),
        ("max_memory_tiny", B + ["--max-memory", "1KB"], "max_memory"),
        ("max_memory_words", B + ["--max-memory", "lots"], "memory size"),
        ("max_memory_above_the_machine", B + ["--max-memory", "100TB"], "more than this"),   # machine has / GPU has
        ("max_memory_below_the_model", B + ["--max-memory", "64MB"], "too small for one"),
        ("float32_of_half_weights", ["basis", "--model", bad / "half_weights", "--dtype", "float32", "--out",
                                     w / "n.safetensors"], "holds float16 weights"),
        ("algorithm_unknown", B + ["--algorithm", "magic"], "invalid choice"),
        ("layer_unknown", B + ["--layer", "not_a_block"], "no layer 'not_a_block'; layers: conv_in"),
        ("strengths_nan", E + ["--strengths", "nan,1"], "finite"),
        ("strengths_inf", E + ["--strengths", "inf"], "finite"),
        ("strengths_huge", E + ["--strengths", "1e9"], "out of range"),
        ("strengths_empty", E + ["--strengths", ","], "non-empty"),
        ("strengths_words", E + ["--strengths", "1,x"], "expected numbers"),
        ("directions_too_large", E + ["--directions", "0,9"], "out of range"),
        ("directions_negative", E + ["--directions=-1"], "out of range"),
        ("n_iter_zero", E + ["--n-iter", "0"], "out of range"),
        ("n_iter_unbounded", E + ["--n-iter", "100000"], "[1, 1000]"),
        ("scale_nan", E + ["--scale", "nan"], "finite"),
        ("edit_out_is_image", E[:-2] + ["--image", w / "grey.png", "--out", w / "grey.png"], "is the input --image"),
        ("edit_out_is_basis", E[:-2] + ["--basis", w / "basis_named.png", "--out", w / "basis_named.png"],
         "is the input --basis"),
        ("edit_recipe_beside_is_basis", E[:-2] + ["--basis", w / "recipe_ok.json", "--out", w / "recipe_ok.png"],
         "is the input --basis"),
        ("edit_basis_nan", E + ["--basis", w / "nan.safetensors"], "NaN"),
        ("edit_basis_other_model", E + ["--basis", w / "other.safetensors"], "computed with model"),
        ("edit_basis_header_k99", E + ["--basis", w / "k99.safetensors"], "k = '99'"),
        ("edit_transfer_without_basis", E + ["--transfer", "motion"], "carries the directions of a basis file"),
        ("edit_transfer_motion_of_h_basis", E + ["--basis", w / "basis.safetensors", "--transfer", "motion"],
         "motion transfer needs one"),
        ("recipe_missing", ["edit", "--recipe", w / "nope.json", "--out", w / "new.png"], "does not exist"),
        ("recipe_not_json", ["edit", "--recipe", w / "recipe_broken.json", "--out", w / "new.png"], "not JSON"),
        ("recipe_a_list", ["edit", "--recipe", w / "recipe_list.json", "--out", w / "new.png"], "JSON object"),
        ("recipe_nan", ["edit", "--recipe", w / "recipe_nan.json", "--out", w / "new.png"], "NaN is not a JSON"),
        ("recipe_n_iter_1e12", ["edit", "--recipe", w / "recipe_niter.json", "--out", w / "new.png"], "[1, 1000]"),
        ("recipe_steps_1e12", ["edit", "--recipe", w / "recipe_steps.json", "--out", w / "new.png"], "[2, 1000]"),
        ("recipe_wrong_type", ["edit", "--recipe", w / "recipe_ktype.json", "--out", w / "new.png"], "whole number"),
        ("recipe_unknown_field", ["edit", "--recipe", w / "recipe_unknown.json", "--out", w / "new.png"],
         "unknown field"),
        ("recipe_format", ["edit", "--recipe", w / "recipe_format.json", "--out", w / "new.png"], "format"),
        ("recipe_two_sources", ["edit", "--recipe", w / "recipe_both.json", "--out", w / "new.png"], "exactly one"),
        ("recipe_timestep", ["edit", "--recipe", w / "recipe_t.json", "--out", w / "new.png"], "outside the schedule"),
        ("recipe_dtype", ["edit", "--recipe", w / "recipe_dtype.json", "--out", w / "new.png"], "dtype"),
        ("recipe_combination_key", ["edit", "--recipe", w / "recipe_combo.json", "--out", w / "new.png"],
         "direction indices"),
        ("recipe_model_missing", ["edit", "--recipe", w / "recipe_model.json", "--out", w / "new.png"], "not found"),
        ("recipe_method", ["edit", "--recipe", w / "recipe_method.json", "--out", w / "new.png"], "method"),
        ("recipe_basis_tampered", ["edit", "--recipe", w / "recipe_basis_hash.json", "--out", w / "new.png"],
         "not the one the recipe was made with"),
        ("recipe_image_tampered", ["edit", "--recipe", w / "recipe_image_hash.json", "--out", w / "new.png"],
         "not the one the recipe was made with"),
        ("recipe_seed_negative", ["edit", "--recipe", w / "recipe_seed.json", "--out", w / "new.png"],
         "out of range"),
        ("recipe_bool_as_text", ["edit", "--recipe", w / "recipe_bool.json", "--out", w / "new.png"], "true or false"),
        ("recipe_strength_huge", ["edit", "--recipe", w / "recipe_strength_big.json", "--out", w / "new.png"],
         "out of range"),
        ("recipe_key_twice", ["edit", "--recipe", w / "recipe_key_twice.json", "--out", w / "new.png"],
         "the key 'seed' appears twice"),
        ("recipe_number_overflows", ["edit", "--recipe", w / "recipe_overflow.json", "--out", w / "new.png"],
         "1e400 is too large"),
        ("mask_box_with_a_negative_corner", B + ["--space", "x0", "--mask", "-1,0,4,4"], "is not inside"),
        ("recipe_out_is_recipe_input", ["edit", "--recipe", w / "recipe_ok.json", "--out", w / "recipe_ok.json"],
         "ending in .png"),
        ("edit_out_not_png", E[:-2] + ["--out", w / "basis.safetensors"], "ending in .png"),
        ("out_is_dev_null", B[:-4] + ["--out", "/dev/null"], "not a regular file"),
        ("t_and_timestep", B + ["--t", "0.5", "--timestep", "10"], "not both"),
        ("config_sample_size_huge", ["basis", "--model", bad / "huge_x", "--out", w / "n.safetensors"],
         "outside what latentbasis handles"),
        ("scheduler_timesteps_1e9", ["basis", "--model", bad / "many_t", "--out", w / "n.safetensors"],
         "[2, 100000]"),
        ("prediction_type_unknown", ["basis", "--model", bad / "flow_pred", "--out", w / "n.safetensors"],
         "not supported"),
        ("info_a_device", ["info", "/dev/zero"], "not a regular file"),
        ("out_not_utf8", B[:-4] + ["--out", w / "\udcff.safetensors"], "is not valid UTF-8"),
        ("png_not_utf8", B[:-2] + ["--png", w / "\udcff.png"], "is not valid UTF-8"),
        ("info_not_utf8", ["info", w / "\udcff.safetensors"], "is not valid UTF-8"),
        ("prompt_not_utf8", B + ["--prompt", "a \udcff cat"], "is not valid UTF-8"),
        ("info_path_with_a_newline", ["info", w / "no\nfile.safetensors"], "no\\x0afile.safetensors does not exist"),
        ("info_path_with_an_escape", ["info", w / "\x1b[2Jclear.safetensors"], "\\x1b[2Jclear"),
        ("model_path_with_a_line_separator", B + ["--model", w / "a\u2028b"], "a\\u2028b"),
        ("out_folder_is_a_file", B[:-4] + ["--out", w / "out.png" / "new.safetensors"], "is a file, not a folder"),
        ("info_corrupt", ["info", w / "corrupt.safetensors"], "not a readable basis file"),
        ("info_missing", ["info", w / "nope.safetensors"], "does not exist"),
        ("info_json", ["info", w / "recipe_ok.json"], "not a readable basis file"),
        ("info_nan", ["info", w / "nan.safetensors"], "NaN"),
        ("report_one_sample", R + ["--samples", "1"], "at least 2 samples"),
        ("report_too_many_samples", R + ["--samples", "100000"], "[1, 4096]"),
        ("report_one_timestep", R + ["--timesteps", "1"], "at least 2 timesteps"),
        ("report_t_order", R + ["--t-min", "0.9", "--t-max", "0.5"], "t_min < t_max"),
        ("report_t_max_above_one", R + ["--t-max", "2"], "out of range"),
        ("report_out_is_a_file", R[:-2] + ["--out", w / "out.png"], "is a file"),
        ("report_prompt_on_pixel_model", R + ["--prompt", "a cat"], "not a text model"),
        ("train_unknown_dataset", ["train", "--dataset", "cats", "--out", w / "new_model"], "unknown dataset"),
        ("train_steps_zero", ["train", "--dataset", "digits", "--steps", "0", "--out", w / "new_model"],
         "out of range"),
        ("train_out_is_a_file", ["train", "--dataset", "digits", "--out", w / "out.png"], "is a file"),
        # a path given for a file that names a folder: nothing made up, nothing written
        ("out_is_the_root", B[:-4] + ["--out", "/"], "is a folder"),
        ("out_is_dot", B[:-4] + ["--out", "."], "is a folder"),
        ("out_ends_in_a_separator", B[:-4] + ["--out", f"{w / 'newdir'}/"], "is a folder"),
        ("png_ends_in_a_separator", B[:-2] + ["--png", f"{w / 'pdir'}/"], "is a folder"),
        ("edit_out_ends_in_a_separator", E[:-2] + ["--out", f"{w / 'e.png'}/"], "is a folder"),
        ("global_out_is_the_root", ["global", "--model", m, "--samples", "2", "--k", "1", "--steps", "3", "--quiet",
                                    "--out", "/"], "is a folder"),
        # an output folder that holds the user's own files (and no earlier run's): refused before anything runs
        ("report_out_holds_other_files", R[:-2] + ["--out", w / "notes_folder"], "already holds other files"),
        ("report_out_is_the_root", R[:-2] + ["--out", "/"], "already holds other files"),
        ("report_out_is_a_model_folder", R[:-2] + ["--out", bad / "degenerate"], "already holds other files"),
        ("compare_out_holds_other_files", ["compare", "--model", m, "--model", o, "--samples", "4", "--timesteps",
                                           "2", "--k", "1", "--steps", "3", "--quiet", "--out", w / "notes_folder"],
         "already holds other files"),
        ("train_out_holds_other_files", ["train", "--dataset", "digits", "--steps", "1", "--no-eval", "--quiet",
                                         "--out", w / "notes_folder"], "already holds other files"),
        ("train_out_is_the_root", ["train", "--dataset", "digits", "--steps", "1", "--no-eval", "--quiet", "--out",
                                   "/"], "already holds other files"),
        # an empty text option means no value, not the default nor the current folder
        ("layer_empty", B + ["--layer", ""], "argument --layer: is empty"),
        ("model_empty", ["basis", "--model", "", "--out", w / "n.safetensors"], "argument --model: is empty"),
        ("image_blank", B + ["--image", " "], "argument --image: is empty"),
        ("basis_empty", E + ["--basis", ""], "argument --basis: is empty"),
        ("info_empty", ["info", ""], "argument file: is empty"),
        ("train_device_missing", ["train", "--dataset", "digits", "--steps", "1", "--device", "cuda:99", "--no-eval",
                                  "--out", w / "new_model"], "CUDA GPU"),   # none available / there are N
    ]


def _case_ids():
    return [c[0] for c in cli_cases(Path("m"), Path("o"), Path("w"))]


@pytest.mark.parametrize("name", _case_ids())
def test_cli_bad_input(name, ws, tiny_unet_dir, other_unet_dir, capsys):
    case = {c[0]: c for c in cli_cases(tiny_unet_dir, other_unet_dir, ws)}[name]
    _, args, says = case
    before = snapshot(ws)
    rc, err = run_main(args, capsys)
    assert rc == 2, (rc, err)
    assert len(err) == 1 and "error" in err[0] and "Traceback" not in err[0], err
    assert "please report" not in err[0], err[0]      # the catch-all is for bugs only
    assert says in err[0], err[0]
    after = snapshot(ws)
    assert after == before, sorted(set(after) ^ set(before)) or "a file changed"


def test_there_are_at_least_80_cases():
    assert len(_case_ids()) >= 80 and len(set(_case_ids())) == len(_case_ids())


# ---------------------------------------------------------------- a handful through real processes

def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "latentbasis", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("name", ["t_nan", "model_index_names_os_system",
                                  *(pytest.param(n, marks=pytest.mark.slow)
                                    for n in ("init_nan", "recipe_n_iter_1e12", "out_is_init"))])
def test_cli_bad_input_in_a_real_process(name, ws, tiny_unet_dir, other_unet_dir):
    case = {c[0]: c for c in cli_cases(tiny_unet_dir, other_unet_dir, ws)}[name]
    before = snapshot(ws)
    r = run_cli(*case[1])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and case[2] in lines[0], r.stderr
    assert "please report" not in lines[0]
    assert snapshot(ws) == before


def test_the_python_api_refuses_the_same_paths_and_names(ws, tiny_unet_dir, tmp_path):
    """The CLI's checks hold at the library's root too: a writer given a folder for a file, an output folder of
    the user's files, an empty layer name, a file name that is not UTF-8."""
    from latentbasis import load_model
    from latentbasis.basisfile import load_basis, save_basis
    from latentbasis.errors import LatentBasisError
    from latentbasis.report import ReportSettings, run_report
    from latentbasis.train import PRESETS, train

    m = load_model(str(tiny_unet_dir), device="cpu")
    b = load_basis(ws / "basis.safetensors")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    for folder in (tmp_path, tmp_path / "mine", f"{tmp_path / 'new'}/"):
        with pytest.raises(LatentBasisError, match="is a folder; give a file path"):
            save_basis(b, folder)
    with pytest.raises(LatentBasisError, match="already holds other files"):
        run_report(m, tmp_path / "mine", ReportSettings(samples=2, timesteps=2, k=1, num_steps=3, geometry=False),
                   progress=False)
    with pytest.raises(LatentBasisError, match="already holds other files"):
        train(PRESETS["digits"], tmp_path / "mine", progress=False)
    for layer in ("", "  "):
        with pytest.raises(LatentBasisError, match="no layer name"):
            m.features(599, layer=layer)
    with pytest.raises(LatentBasisError, match="not valid UTF-8"):     # a name no header or recipe can hold
        save_basis(b, tmp_path / "\udcff.safetensors")
    with pytest.raises(LatentBasisError, match="not valid UTF-8"):
        load_basis(tmp_path / "\udcff.safetensors")
    assert snapshot(tmp_path) == before


@pytest.fixture(scope="module")
def api_model(tiny_unet_dir):
    from latentbasis import load_model

    m = load_model(str(tiny_unet_dir), device="cpu")
    return m, torch.randn(m.x_shape, generator=torch.Generator().manual_seed(0))


API_CASES = {   # name: (call(m, x), what the message says); every public entry that takes x_t, k or t
    "x_numpy": (lambda lb, m, x: lb.latent_basis(m, x.numpy(), timestep=599, k=2), "must be a torch.Tensor"),
    "x_list": (lambda lb, m, x: lb.latent_basis(m, x.tolist(), timestep=599, k=2), "must be a torch.Tensor"),
    "x_integers": (lambda lb, m, x: lb.latent_basis(m, x.long(), timestep=599, k=2), "floating-point"),
    "x_nan": (lambda lb, m, x: lb.latent_basis(m, x * float("nan"), timestep=599, k=2), "NaN or infinite"),
    "x_inf": (lambda lb, m, x: lb.latent_basis(m, x / 0, timestep=599, k=2), "NaN or infinite"),
    "k_true": (lambda lb, m, x: lb.latent_basis(m, x, timestep=599, k=True), "k is not a whole number"),
    "k_text": (lambda lb, m, x: lb.latent_basis(m, x, timestep=599, k="2"), "k is not a whole number"),
    "k_fraction": (lambda lb, m, x: lb.latent_basis(m, x, timestep=599, k=2.5), "k is not a whole number"),
    "t_text": (lambda lb, m, x: lb.latent_basis(m, x, t="0.5", k=2), "t is not a number"),
    "timestep_fraction": (lambda lb, m, x: lb.latent_basis(m, x, timestep=599.5, k=2), "not a whole number"),
    "pullback_x_nan": (lambda lb, m, x: lb.pullback_basis(m.features(599), x * float("nan"), 2), "NaN"),
    "pullback_k_text": (lambda lb, m, x: lb.pullback_basis(m.features(599), x, "two"), "k is not a whole number"),
    "sample_to_t_text": (lambda lb, m, x: lb.sample_to(m, 0, t="late", num_steps=3), "t is not a number"),
    "sample_to_seed_text": (lambda lb, m, x: lb.sample_to(m, "one", t=0.5, num_steps=3), "seed is not a whole number"),
    "sample_to_steps_zero": (lambda lb, m, x: lb.sample_to(m, 0, t=0.5, num_steps=0), "steps = 0 is out of range"),
    "callback_strength_text": (lambda lb, m, x: lb.edit_callback(lb.latent_basis(m, x, timestep=599, k=2), 0, "big"),
                               "strength is not a number"),
    "load_model_a_number": (lambda lb, m, x: lb.load_model(123), "model must be text or a path"),
    "save_basis_of_none": (lambda lb, m, x: lb.save_basis(None, "unused.safetensors"), "takes a Basis"),
    "save_basis_to_a_number": (lambda lb, m, x: lb.save_basis(lb.latent_basis(m, x, timestep=599, k=1), 123),
                               "must be text or a path"),
    "angles_other_spaces": (lambda lb, m, x: lb.geodesic_distance(torch.randn(2, 10), torch.randn(2, 11)),
                            "different spaces"),
    "angles_nan": (lambda lb, m, x: lb.geodesic_distance(torch.full((2, 10), float("nan")), torch.randn(2, 10)),
                   "NaN"),
    "angles_numpy": (lambda lb, m, x: lb.principal_angles(np.ones((2, 10)), torch.randn(2, 10)),
                     "must be a floating-point torch.Tensor"),
    "angles_dependent_rows": (lambda lb, m, x: lb.chordal_distance(torch.zeros(2, 10), torch.randn(2, 10)),
                              "not linearly independent"),
    "random_subspaces_k_above_n": (lambda lb, m, x: lb.random_subspace_distances(10, 20, 5), "out of range"),
    "pullback_of_no_function": (lambda lb, m, x: lb.pullback_basis(None, x, 2), "must be a feature map"),
    "t_and_timestep": (lambda lb, m, x: lb.latent_basis(m, x, t=0.5, timestep=10, k=2), "not both"),
    "report_settings_words": (lambda lb, m, x: lb.run_report(m, "unused", lb.ReportSettings(samples="many"),
                                                             progress=False), "settings.samples is not a whole"),
    "callback_direction_fraction": (lambda lb, m, x: lb.edit_callback(lb.latent_basis(m, x, timestep=599, k=2),
                                                                      0.5), "direction is not a whole number"),
    # the editing and carrying functions the README shows: directions, strengths, indices, warm starts, seeds
    "edit_numpy_directions": (lambda lb, m, x: _edit(m, np.zeros((1, *m.x_shape), np.float32)),
                              "must be a torch.Tensor"),
    "edit_nan_directions": (lambda lb, m, x: _edit(m, torch.full((1, *m.x_shape), float("nan"))), "NaN or infinite"),
    "edit_one_direction_without_its_row": (lambda lb, m, x: _edit(m, torch.zeros(m.x_shape)), "directions are rows"),
    "sweep_nan_strength": (lambda lb, m, x: _sweep(lb, m, x, [0], [float("nan")]), "not a finite number"),
    "sweep_no_strengths": (lambda lb, m, x: _sweep(lb, m, x, [0], []), "at least one direction and one strength"),
    "combine_infinite_weight": (lambda lb, m, x: _combine(lb, m, x, {0: float("inf")}), "not a finite number"),
    "combine_index_text": (lambda lb, m, x: _combine(lb, m, x, {"first": 1.0}), "is not a whole number"),
    "combine_weights_a_list": (lambda lb, m, x: _combine(lb, m, x, [1.0, 2.0]), "must be a dict"),
    "transport_nan_vector": (lambda lb, m, x: _transport(lb, m, x, float("nan")), "NaN or infinite"),
    "global_directions_of_numbers": (lambda lb, m, x: _global(lb, [1, 2], 2), "made of bases"),
    "global_directions_k_zero": (lambda lb, m, x: _global(lb, [lb.latent_basis(m, x, timestep=599, k=1)] * 2, 0),
                                 "k = 0 is out of range"),
    "warm_start_nan": (lambda lb, m, x: lb.latent_basis(m, x, timestep=599, k=2, init=torch.full((2, *m.x_shape),
                                                                                                  float("nan"))),
                       "warm start holds NaN"),
    "warm_start_numpy": (lambda lb, m, x: lb.latent_basis(m, x, timestep=599, k=2,
                                                          init=np.zeros((2, *m.x_shape), np.float32)), "warm start"),
    "tol_negative": (lambda lb, m, x: lb.latent_basis(m, x, timestep=599, k=2, tol=-1.0), "tol = -1"),
    "carry_to_seeds_in_words": (lambda lb, m, x: _carry(m, "three"), "seed is not a whole number"),
    "carry_to_a_negative_seed": (lambda lb, m, x: _carry(m, [-1]), "seed = -1 is out of range"),
    "edit_a_direction_past_k": (lambda lb, m, x: _carry(m, [1], strengths=[1.0, 0.0, 2.0]),
                                "direction 3 has strength 2, but the basis has 1 direction"),
    "edit_strengths_as_a_number": (lambda lb, m, x: _carry(m, [1], strengths=1.0), "must be a list of numbers"),
    "model_given_by_name": (lambda lb, m, x: lb.latent_basis("digits", x, timestep=599, k=2),
                            "load it first, model = latentbasis.load_model('digits')"),
    "sample_to_of_no_model": (lambda lb, m, x: lb.sample_to(None, 0, t=0.5), "must be a loaded model"),
    "load_basis_for_a_model_name": (lambda lb, m, x: _load_for_name(lb, m, x), "must be a loaded model"),
    "trajectory_through_a_timestep_past_T": (lambda lb, m, x: _global_at(lb, m, 5000), "out of range [0, 999]"),
    "carry_a_file_name": (lambda lb, m, x: _transported(lb, m, x, "basis.safetensors", None), "must be a basis"),
    "transport_rank_negative": (lambda lb, m, x: _transported(lb, m, x, None, -3), "transport rank = -3"),
}


def _edit(m, d):
    from latentbasis.editing import edit_images
    from latentbasis.sampling import sample_trajectory

    return edit_images(m, sample_trajectory(m, 0, num_steps=3, through=599), 599, d)


def _sweep(lb, m, x, indices, strengths):
    from latentbasis.editing import sweep_directions

    return sweep_directions(lb.latent_basis(m, x, timestep=599, k=1).latent, indices, strengths)


def _combine(lb, m, x, weights):
    from latentbasis.editing import combine

    return combine(lb.latent_basis(m, x, timestep=599, k=1).latent, weights)


def _transport(lb, m, x, value):
    from latentbasis.transport import transport

    b = lb.latent_basis(m, x, timestep=599, k=1)
    return transport(torch.full_like(b.tangent[0], value), b.latent, b.tangent)


def _global(lb, bases, k):
    from latentbasis.transport import global_directions

    return global_directions(bases, k)


def _load_for_name(lb, m, x):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = lb.save_basis(lb.latent_basis(m, x, timestep=599, k=1), f"{d}/b.safetensors")
        return lb.load_basis(path, model="digits")


def _global_at(lb, m, timestep):
    from latentbasis.transport import global_basis

    return global_basis(m, range(2), timestep=timestep, k=1, num_steps=3)


def _transported(lb, m, x, given, rank):
    from latentbasis.transport import transported_basis

    given = lb.latent_basis(m, x, timestep=599, k=1) if given is None else given
    return transported_basis(m, given, x * 0.5, 599, rank=rank)


def _carry(m, seeds, strengths=(1.0, 0.0)):
    """A session's edit (strengths: one per direction of its k = 1 basis, then the app's hidden sliders at 0)
    carried to seeds."""
    from latentbasis import session

    s = session.EditSession(num_steps=5)
    session.sample(m, s, seed=0, t=0.6)
    session.find_directions(m, s, t=0.6, k=1)
    session.apply_edit(m, s, strengths if not isinstance(strengths, tuple) else list(strengths))
    assert s.strengths == {0: 1.0}
    return session.carry(m, s, seeds)


@pytest.mark.parametrize("name", sorted(API_CASES))
def test_the_python_api_checks_what_it_is_given(name, api_model):
    """The public functions take a latent, k and t from a user's own code: a wrong type or value is one
    LatentBasisError naming it, not an AttributeError or a failed SVD deep inside."""
    import latentbasis as lb

    m, x = api_model
    call, says = API_CASES[name]
    with pytest.raises(lb.LatentBasisError) as err:
        call(lb, m, x)
    assert says in str(err.value), str(err.value)


def test_the_python_api_takes_numpy_and_torch_scalars(api_model):
    """A one-number array or tensor is its number: k = np.int64(2) and timestep = torch.tensor(599) give the
    basis that k = 2 and timestep = 599 give."""
    import latentbasis as lb

    m, x = api_model
    a = lb.latent_basis(m, x, timestep=599, k=2)
    b = lb.latent_basis(m, x[None].double(), timestep=torch.tensor(599), k=np.int64(2))
    assert torch.equal(a.singular_values, b.singular_values) and b.timestep == 599 and b.k == 2


# ---------------------------------------------------------------- nothing runs from a data file

def test_a_planted_checkpoint_runs_nothing(tmp_path, capsys):
    """A pickle that would create a file when unpickled: `latentbasis train` refuses it and the file never appears."""
    import pickle

    flag = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {flag}",))

    out = tmp_path / "model"
    out.mkdir()
    with open(out / "checkpoint.pt", "wb") as fh:
        pickle.dump({"step": Evil()}, fh)
    torch.save({"unet": {}, "step": Evil()}, out / "checkpoint2.pt")   # the zip format torch writes, same payload
    for name in ("checkpoint.pt", "checkpoint2.pt"):
        if name != "checkpoint.pt":
            shutil.move(out / name, out / "checkpoint.pt")
        rc, err = run_main(["train", "--dataset", "digits", "--steps", "2", "--no-eval", "--quiet", "--out", out],
                           capsys)
        assert rc == 2 and len(err) == 1 and "not a readable training checkpoint" in err[0], err
        assert not flag.exists()


def test_a_model_folder_cannot_import_what_it_names(tmp_path, tiny_unet_dir, capsys):
    """model_index.json naming a module of the attacker's (on sys.path) and os.system: neither is imported."""
    evil = tmp_path / "evil_module_of_attacker.py"
    flag = tmp_path / "imported"
    evil.write_text(f"open({str(flag)!r}, 'w').write('x')\nclass UNet2DModel: pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        for lib, cls in (("evil_module_of_attacker", "UNet2DModel"), ("os", "system"), ("builtins", "eval"),
                         ("diffusers", "DiffusionPipeline")):
            d = tmp_path / f"m_{lib}_{cls}"
            shutil.copytree(tiny_unet_dir, d / "unet")
            (d / "scheduler").mkdir()
            shutil.copy(d / "unet" / "scheduler_config.json", d / "scheduler" / "scheduler_config.json")
            (d / "model_index.json").write_text(json.dumps({"_class_name": "X", "unet": [lib, cls]}))
            rc, err = run_main(["basis", "--model", d, "--out", tmp_path / "b.safetensors"], capsys)
            assert rc == 2 and "does not load" in err[0], err
        assert not flag.exists() and "evil_module_of_attacker" not in sys.modules
    finally:
        sys.path.remove(str(tmp_path))


# ---------------------------------------------------------------- the app's handlers

@pytest.fixture(scope="module")
def app(tiny_unet_dir, ws):
    pytest.importorskip("gradio")
    from latentbasis import load_model
    from latentbasis.app import load_editor

    E = load_editor()
    model = load_model(str(tiny_unet_dir), device="cpu")
    found = E.Session()
    E.new_sample(model, found, 1, 0.6)
    E.find_directions(model, found, 0.6, 2, "guidance")
    return E, model, found


APP_CASES = {
    "seed_words": (lambda E, m, s, w: E.new_sample(m, E.Session(), "abc", 0.6), "whole number"),
    "seed_negative": (lambda E, m, s, w: E.new_sample(m, E.Session(), -1, 0.6), "seed"),
    "seed_huge": (lambda E, m, s, w: E.new_sample(m, E.Session(), 2**70, 0.6), "seed"),
    "t_above_one": (lambda E, m, s, w: E.new_sample(m, E.Session(), 0, 1.5), "outside the schedule"),
    "guidance_nan": (lambda E, m, s, w: E.new_sample(m, E.Session(), 0, 0.6, "", float("nan")), "out of range"),
    "prompt_on_pixel_model": (lambda E, m, s, w: E.new_sample(m, E.Session(), 0, 0.6, "a cat"), "not a text model"),
    "upload_text": (lambda E, m, s, w: E.upload_image(m, E.Session(), str(w / "notes.png"), 0.6),
                    "not a readable image"),
    "upload_nothing": (lambda E, m, s, w: E.upload_image(m, E.Session(), None, 0.6), "no image"),
    "upload_too_small": (lambda E, m, s, w: E.upload_image(m, E.Session(), str(w / "tiny.png"), 0.6), "too small"),
    "upload_bomb": (lambda E, m, s, w: E.upload_image(m, E.Session(), str(w / "bomb.png"), 0.6), "40,000,000"),
    "upload_animated": (lambda E, m, s, w: E.upload_image(m, E.Session(), str(w / "anim.gif"), 0.6), "animated"),
    "find_k_99": (lambda E, m, s, w: E.find_directions(m, s, 0.6, 99, "guidance"), "out of range"),
    "find_k_words": (lambda E, m, s, w: E.find_directions(m, s, 0.6, "many", "guidance"), "whole number"),
    "find_before_a_source": (lambda E, m, s, w: E.find_directions(m, E.Session(), 0.6, 2, "guidance"),
                             "choose a source"),
    "find_mask_of_another_size": (lambda E, m, s, w: E.find_directions(m, s, 0.6, 2, "guidance", space="x0",
                                                                      mask=torch.ones(3, 3, dtype=torch.bool)),
                                  "has shape (3, 3)"),
    "find_mask_of_nan": (lambda E, m, s, w: E.find_directions(
        m, s, 0.6, 2, "guidance", space="x0", mask=torch.full((m.pixel_size()[1],) * 2, float("nan"))),
        "not a finite number"),
    "find_method": (lambda E, m, s, w: E.find_directions(m, s, 0.6, 2, "sideways"), "unknown edit method"),
    "slide_huge": (lambda E, m, s, w: E.apply_edit(m, s, "guidance", [1e6, 0]), "out of range"),
    "slide_nan": (lambda E, m, s, w: E.apply_edit(m, s, "guidance", [float("nan"), 0]), "out of range"),
    "slide_words": (lambda E, m, s, w: E.apply_edit(m, s, "guidance", ["x", 0]), "not a number"),
    "slide_before_find": (lambda E, m, s, w: E.apply_edit(m, E.Session(), "guidance", [1]), "Find directions"),
    "preview_before_find": (lambda E, m, s, w: E.preview_edit(m, E.Session(), "guidance", [1]), "Find directions"),
    "import_other_model": (lambda E, m, s, w: E.import_basis(m, s, str(w / "other.safetensors")),
                           "computed with model"),
    "import_corrupt": (lambda E, m, s, w: E.import_basis(m, s, str(w / "corrupt.safetensors")), "not a readable"),
    "import_nan": (lambda E, m, s, w: E.import_basis(m, s, str(w / "nan.safetensors")), "NaN"),
    "report_one_sample": (lambda E, m, s, w: E.small_report(m, E.Session(), 1, 2, 2), "out of range"),
    "export_before_find": (lambda E, m, s, w: E.export(m, E.Session()), "Find directions"),
}


@pytest.mark.parametrize("name", sorted(APP_CASES))
def test_app_bad_input(name, app, ws):
    E, model, found = app
    fn, says = APP_CASES[name]
    basis_before = found.basis
    before = snapshot(ws)
    with pytest.raises(E.AppError) as err:
        fn(E, model, found, ws)
    msg = without_paths(str(err.value))
    assert says in msg and str(ws) not in msg and "/tmp" not in msg, msg
    assert found.basis is basis_before and snapshot(ws) == before


def test_app_messages_never_show_server_paths():
    assert without_paths("/tmp/gradio/abc123/photo.png is not a readable image") == "photo.png is not a readable image"
    assert without_paths("cannot read C:\\Users\\me\\x.png: no") == "cannot read x.png: no"
    assert without_paths("k = 3 is out of range") == "k = 3 is out of range"


# ---------------------------------------------------------------- killed while writing

def _kill_at_random(args, cwd, delays):
    """Start the command, SIGKILL it after each delay in turn (restarting it), then let it finish."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for delay in delays:
        p = subprocess.Popen([sys.executable, "-m", "latentbasis", *map(str, args)], cwd=cwd, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
    return subprocess.run([sys.executable, "-m", "latentbasis", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_killed_reports_resume_to_the_same_numbers(tmp_path, tiny_unet_dir):
    from latentbasis.grid import load_trajectory
    from latentbasis.basisfile import load_basis
    from latentbasis.loading import load_model

    args = ["report", "--model", tiny_unet_dir, "--samples", "3", "--timesteps", "3", "--k", "2", "--steps", "8",
            "--quiet", "--device", "cpu"]
    clean = subprocess.run([sys.executable, "-m", "latentbasis", *map(str, args), "--out", tmp_path / "clean"],
                           capture_output=True, text=True, timeout=600)
    assert clean.returncode == 0, clean.stderr
    rng = np.random.default_rng(int(time.time()))
    done = _kill_at_random(args + ["--out", tmp_path / "killed"], tmp_path, rng.uniform(4.0, 8.0, 2))
    assert done.returncode == 0, done.stderr
    model = load_model(str(tiny_unet_dir), device="cpu")
    files = list((tmp_path / "killed" / "cache").rglob("*.safetensors"))
    assert sum(f.name == "trajectory.safetensors" for f in files) == 3 and len(files) == 3 + 3 * 3
    for f in files:                                        # every file whole (each read is fully checked)
        load_trajectory(f, model) if f.name == "trajectory.safetensors" else load_basis(f, model)
    assert not list((tmp_path / "killed").rglob(".*.tmp*"))   # completed writes clear what killed ones left
    a, b = (json.loads((tmp_path / d / "numbers.json").read_text()) for d in ("clean", "killed"))
    timings = [key for key in a if key.startswith("seconds")]    # wall-clock fields, the only ones that vary
    assert "seconds_per_basis" in timings
    for key in timings:
        a.pop(key), b.pop(key)
    assert a == b


@pytest.mark.slow
def test_a_killed_basis_leaves_the_old_file_or_a_whole_new_one(tmp_path, tiny_unet_dir):
    from latentbasis.basisfile import load_basis

    out = tmp_path / "b.safetensors"
    args = ["basis", "--model", tiny_unet_dir, "--k", "3", "--steps", "20", "--quiet", "--out", out, "--png", ""]
    assert subprocess.run([sys.executable, "-m", "latentbasis", *map(str, args)], capture_output=True,
                          timeout=600).returncode == 0
    old = out.read_bytes()
    rng = np.random.default_rng(int(time.time()) + 1)
    for delay in rng.uniform(3.0, 7.0, 2):
        p = subprocess.Popen([sys.executable, "-m", "latentbasis", *map(str, args), "--seed", "5"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert out.read_bytes() == old or load_basis(out).seed == 5   # the old file, or a whole new one
    done = subprocess.run([sys.executable, "-m", "latentbasis", *map(str, args), "--seed", "6"], capture_output=True,
                          timeout=600)
    assert done.returncode == 0 and load_basis(out).seed == 6
    assert not list(tmp_path.glob(".*.tmp*"))     # a completed write clears what killed ones left behind


# ---------------------------------------------------------------- second round: classes closed at their root
# Each class: one fix where the input is read, and fresh cases (formats, fields, files not used above).

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n"
       b"newpath 0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n")
PS = b"%!PS-Adobe-3.0\n%%BoundingBox: 0 0 32 32\n%%Pages: 1\n%%EndComments\n0 0 moveto 32 32 lineto stroke\nshowpage\n"


@pytest.fixture
def fake_ghostscript(tmp_path, monkeypatch):
    """A stand-in `gs` first on PATH that leaves a marker file when anything runs it; the marker's path."""
    from PIL import EpsImagePlugin

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "gs_ran"
    gs = bin_dir / "gs"
    gs.write_text(f"#!/bin/sh\necho ran >> {marker}\nexit 1\n")
    gs.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)      # Pillow looks for gs once, then remembers
    return marker


def _postscript_files(d: Path) -> dict[str, Path]:
    """PostScript under image names: what Pillow would hand to Ghostscript if it were asked to read them."""
    files = {"photo.png": EPS, "scan.jpg": PS, "region.png": EPS, "upload.webp": EPS, "picture.bmp": PS}
    out = {}
    for name, data in files.items():
        (d / name).write_bytes(data)
        out[name] = d / name
    return out


def test_the_stand_in_ghostscript_runs_when_pillow_reads_postscript(tmp_path, fake_ghostscript):
    """The check below can fail: Pillow's own reader, asked for an EPS, runs whatever `gs` is on PATH."""
    from PIL import Image

    f = _postscript_files(tmp_path)["photo.png"]
    with pytest.raises(Exception):
        with Image.open(f) as im:
            im.load()
    assert fake_ghostscript.exists()


@pytest.mark.parametrize("case", ["image_eps_named_png", "image_ps_named_jpg", "image_ps_named_bmp",
                                  "mask_eps_named_png"])
def test_postscript_under_any_name_is_refused_and_runs_nothing(case, tmp_path, tiny_unet_dir, fake_ghostscript,
                                                               capsys):
    files = _postscript_files(tmp_path)
    base = ["basis", "--model", tiny_unet_dir, "--steps", "3", "--k", "2", "--quiet", "--out",
            tmp_path / "b.safetensors", "--png", ""]
    args = {"image_eps_named_png": base + ["--image", files["photo.png"]],
            "image_ps_named_jpg": base + ["--image", files["scan.jpg"]],
            "image_ps_named_bmp": base + ["--image", files["picture.bmp"]],
            "mask_eps_named_png": base + ["--space", "x0", "--mask", files["region.png"]]}[case]
    before = snapshot(tmp_path)
    rc, err = run_main(args, capsys)
    assert rc == 2 and len(err) == 1 and "not a readable image" in err[0], err
    assert "please report" not in err[0] and "Traceback" not in err[0]
    assert not fake_ghostscript.exists(), "Ghostscript ran"
    assert snapshot(tmp_path) == before


def test_an_app_upload_of_postscript_runs_nothing(tmp_path, app, fake_ghostscript):
    E, model, _ = app
    f = _postscript_files(tmp_path)["upload.webp"]
    with pytest.raises(E.AppError, match="not a readable image"):
        E.upload_image(model, E.Session(), str(f), 0.6)
    assert not fake_ghostscript.exists()


def _bad_folder(root: Path, tiny_unet_dir: Path, name: str, change) -> Path:
    """A copy of the tiny model folder with one file changed by change(folder)."""
    md = root / name
    if not md.exists():
        shutil.copytree(tiny_unet_dir, md)
        change(md)
    return md


def _edit_json(file_name: str, **fields):
    def change(md: Path):
        cfg = json.loads((md / file_name).read_text())
        (md / file_name).write_text(json.dumps({**cfg, **fields}))
    return change


def _replace(file_name: str, make):
    def change(md: Path):
        (md / file_name).unlink()
        make(md / file_name)
    return change


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


JSON_CASES = {
    # reads without limits: not a regular file, or too large
    "config_links_to_dev_zero": (_replace("config.json", lambda p: p.symlink_to("/dev/zero")), "not a regular file"),
    "scheduler_config_is_a_fifo": (_replace("scheduler_config.json", lambda p: os.mkfifo(p)), "not a regular file"),
    "config_is_a_folder": (_replace("config.json", lambda p: p.mkdir()), "is a folder"),
    "config_of_5_mb": (_replace("config.json", lambda p: p.write_text('{"pad": "' + "x" * (5 * 2**20) + '"}')),
                       "at most 4,194,304 are read"),
    # field types
    "sample_size_a_float": (_edit_json("config.json", sample_size=16.5), "'sample_size'"),
    "sample_size_a_string": (_edit_json("config.json", sample_size="16"), "'sample_size'"),
    "in_channels_a_list": (_edit_json("config.json", in_channels=[1]), "'in_channels'"),
    "trained_betas_2d": (_edit_json("scheduler_config.json", trained_betas=[[0.1, 0.2], [0.3, 0.4]]),
                         "'trained_betas'"),
    "num_train_timesteps_a_string": (_edit_json("scheduler_config.json", num_train_timesteps="1000"),
                                     "'num_train_timesteps'"),
    "clip_sample_a_number": (_edit_json("scheduler_config.json", clip_sample=1), "'clip_sample'"),
    # nesting
    "config_nested_100000_deep": (_replace("config.json", lambda p: p.write_text('{"a": ' + _nested(100_000) + "}")),
                                  "nests more than 32"),
    "scheduler_nested_40_deep": (_replace("scheduler_config.json",
                                          lambda p: p.write_text('{"a": ' + _nested(40) + "}")), "nests more than 32"),
    "extra_json_nested_deep": (lambda md: (md / "extra_config.json").write_text(_nested(50_000)), "nests more than 32"),
}


@pytest.mark.parametrize("name", sorted(JSON_CASES))
def test_every_json_of_a_model_folder_goes_through_one_reader(name, tmp_path_factory, tiny_unet_dir, capsys):
    root = tmp_path_factory.getbasetemp() / "json_cases"
    root.mkdir(exist_ok=True)
    change, says = JSON_CASES[name]
    md = _bad_folder(root, tiny_unet_dir, name, change)
    out = tmp_path_factory.mktemp("out")
    (out / "earlier.safetensors").write_bytes(b"an earlier output")
    before = snapshot(out)
    rc, err = run_main(["basis", "--model", md, "--steps", "3", "--k", "2", "--quiet", "--out",
                        out / "earlier.safetensors", "--png", ""], capsys)
    assert rc == 2 and len(err) == 1 and says in err[0], err
    assert "please report" not in err[0] and "Traceback" not in err[0]
    assert snapshot(out) == before


def _fifo_image(d: Path, w: Path, m: Path) -> tuple[list, Path]:
    os.mkfifo(d / "image.png")
    return ["edit", "--model", m, "--image", d / "image.png", "--steps", "3", "--k", "2", "--n-iter", "1", "--quiet",
            "--out", w / "new.png"], d / "image.png"


def _fifo_init(d: Path, w: Path, m: Path) -> tuple[list, Path]:
    os.mkfifo(d / "init.safetensors")
    return ["basis", "--model", m, "--init", d / "init.safetensors", "--steps", "3", "--k", "2", "--quiet",
            "--out", w / "new.safetensors", "--png", ""], d / "init.safetensors"


def _fifo_weights(d: Path, w: Path, m: Path) -> tuple[list, Path]:
    md = d / "model"
    shutil.copytree(m, md)
    (md / "diffusion_pytorch_model.safetensors").unlink()
    os.mkfifo(md / "diffusion_pytorch_model.safetensors")
    return ["basis", "--model", md, "--steps", "3", "--k", "2", "--quiet", "--out", w / "new.safetensors",
            "--png", ""], md / "diffusion_pytorch_model.safetensors"


def _fifo_tokenizer_file(d: Path, w: Path, m: Path) -> tuple[list, Path]:
    md = d / "model"
    shutil.copytree(m, md)
    os.mkfifo(md / "merges.txt")              # any file of a component folder, not only its JSON and weights
    return ["basis", "--model", md, "--steps", "3", "--k", "2", "--quiet", "--out", w / "new.safetensors",
            "--png", ""], md / "merges.txt"


def _fifo_checkpoint(d: Path, w: Path, m: Path) -> tuple[list, Path]:
    (d / "run").mkdir()
    os.mkfifo(d / "run" / "checkpoint.pt")    # where a resumed training run reads its checkpoint
    return ["train", "--dataset", "digits", "--steps", "1", "--out", d / "run", "--quiet", "--no-eval"], d / "run" / "checkpoint.pt"


@pytest.mark.parametrize("make", [_fifo_image, _fifo_init, _fifo_weights, _fifo_tokenizer_file, _fifo_checkpoint],
                         ids=lambda f: f.__name__[1:])
def test_no_input_that_is_not_a_regular_file_is_opened(make, tmp_path, tiny_unet_dir, capsys):
    """An input path (or any file of an input model folder) that is a FIFO: opening it would wait for a writer (a
    device such as /dev/zero could be read for ever), so it is refused by its file type before anything opens it.
    The command runs in a thread with a time limit: one still running then has opened the FIFO and waits on it, so
    the test opens and closes its other end (the command reads an empty file and goes on) and fails."""
    import threading

    w = tmp_path / "outputs"
    w.mkdir()
    (w / "earlier.txt").write_text("an earlier output")
    args, fifo = make(tmp_path, w, tiny_unet_dir)
    done = {}
    run = threading.Thread(target=lambda: done.setdefault("code", main([str(a) for a in args])), daemon=True)
    run.start()
    run.join(60)
    if run.is_alive():
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))   # the waiting open() returns; its read is empty
        except OSError:
            pass
        run.join(10)
        pytest.fail(f"the command opened {fifo.name} and waited on it")
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert done["code"] == 2 and len(lines) == 1 and "not a regular file" in lines[0], err
    assert "please report" not in lines[0] and "Traceback" not in err
    assert sorted(p.name for p in w.iterdir()) == ["earlier.txt"]


def test_a_recipe_saved_with_a_byte_order_mark_is_read(ws, tmp_path):
    """Editors on Windows start UTF-8 files with a byte-order mark; the reader takes it."""
    from latentbasis.recipe import EditRecipe

    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + (ws / "recipe_ok.json").read_bytes())
    assert EditRecipe.from_file(tmp_path / "bom.json") == EditRecipe.from_file(ws / "recipe_ok.json")


def test_a_recipe_that_would_not_replay_is_not_written(ws, tmp_path):
    """The recipe's JSON is read back and checked as `edit --recipe` reads it before it is written: one that would
    be refused (here a NaN strength that reached it) is one message, and neither the grid nor the recipe is
    written (they go together)."""
    from latentbasis import LatentBasisError
    from latentbasis.recipe import EditRecipe, EditResult

    r = EditRecipe.from_file(ws / "recipe_ok.json")
    r.strengths = [0.0, float("nan")]
    with pytest.raises(LatentBasisError, match="would not replay, so it is not written: .*not a finite number"):
        r.to_json()
    from types import SimpleNamespace

    r.directions = [0]
    res = EditResult(torch.zeros(1, 2, 1, 8, 8), basis=SimpleNamespace(singular_values=torch.ones(1)),
                     trajectory=None, recipe=r)
    out = tmp_path / "e.png"
    with pytest.raises(LatentBasisError, match="would not replay"):
        res.write(out, out.with_suffix(".json"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name,text,says", [
    ("recipe_nested_deep", '{"seed": 0, "x": ' + _nested(64) + "}", "nests more than 32"),
    ("recipe_recursion", '{"seed": ' + _nested(200_000) + "}", "nests more than 32"),
    ("recipe_a_fifo", None, "not a regular file"),
])
def test_recipes_go_through_the_same_reader(name, text, says, tmp_path, tiny_unet_dir, capsys):
    f = tmp_path / "recipe.json"
    if text is None:
        os.mkfifo(f)
    else:
        f.write_text(text)
    rc, err = run_main(["edit", "--recipe", f, "--out", tmp_path / "new.png"], capsys)
    assert rc == 2 and len(err) == 1 and says in err[0], err
    assert "please report" not in err[0]
    assert not (tmp_path / "new.png").exists()


@pytest.mark.parametrize("key,value", [
    ("prompt", "a cat\x1b[2J\x1b[31m"),                       # clear the screen, turn red
    ("note", "fine\nmodel_hash: 0000000000000000"),            # forge a line of its own
    ("evil\x1b]0;title\x07", "x"),                             # an escape in a key (sets the window title)
    ("prompt", "abc\u202edcb\u2028next"),                      # a bidi override and a line separator
])
def test_info_prints_header_values_escaped(key, value, ws, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(ws / "basis.safetensors"), framework="pt") as fh:
        meta = dict(fh.metadata())
        tensors = {n: fh.get_tensor(n) for n in fh.keys()}
    meta[key] = value
    f = tmp_path / "told.safetensors"
    save_file(tensors, str(f), metadata=meta)
    rc = main(["info", str(f)])
    out = capsys.readouterr().out
    assert rc in (0, None)
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out and "\u2028" not in out
    k = int(meta["k"])   # a line per header field (the descriptions apart), the shapes, which reading the
    described = bool(json.loads(meta.get("descriptions", "[]")))   # descriptions are, then one per direction
    assert len(out.splitlines()) == len(meta) - ("descriptions" in meta) + 1 + described + k
    assert not any(ln.startswith("model_hash: 0000") for ln in out.splitlines())


@pytest.mark.parametrize("condition,says", [
    ({"kind": "label", "condition": "7", "cosine": 5}, "not a number in [-1, 1]"),
    ({"kind": "label", "condition": "7", "cosine": True}, "not a number in [-1, 1]"),
    ({"kind": "exec", "condition": "7", "cosine": 0.1}, "not a label or prompt"),
    ({"kind": "prompt", "condition": ["x"], "cosine": 0.1}, "not a label or prompt"),
    ("7", "not a label or prompt"),
    ({"kind": "prompt", "condition": "a cat\x1b[2J", "cosine": 0.1}, None),   # printed escaped
])
def test_a_stored_condition_line_is_checked(condition, says, ws, tmp_path, capsys):
    """A description's closest label or prompt (describe.condition_alignment) is data: checked when read, and
    printed escaped."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(ws / "basis.safetensors"), framework="pt") as fh:
        meta = dict(fh.metadata())
        tensors = {n: fh.get_tensor(n) for n in fh.keys()}
    descriptions = json.loads(meta["descriptions"]) or [{"name": "x", "shares": {}} for _ in range(int(meta["k"]))]
    descriptions[0]["condition"] = condition
    meta["descriptions"] = json.dumps(descriptions)
    f = tmp_path / "told.safetensors"
    save_file(tensors, str(f), metadata=meta)
    rc = main(["info", str(f)])
    out, err = capsys.readouterr()
    if says is None:
        assert rc in (0, None) and "closest prompt" in out and "\x1b" not in out
    else:
        assert rc == 2 and says in err and len(err.strip().splitlines()) == 1, err


@pytest.fixture(scope="module")
def region_ws(tmp_path_factory, tiny_unet_dir):
    """A model folder of its own, a region PNG under several names, and an edit (with its recipe) made with it."""
    from PIL import Image

    d = tmp_path_factory.mktemp("region_ws")
    shutil.copytree(tiny_unet_dir, d / "model")
    a = np.zeros((8, 8), np.uint8)       # the tiny model's images are 8x8
    a[2:6, 2:6] = 255
    for name in ("region.png", "region_b.png", "region.safetensors"):
        Image.fromarray(a).save(d / name, format="PNG")
    rc = main(["edit", "--model", str(d / "model"), "--space", "x0", "--mask", str(d / "region.png"), "--steps", "3",
               "--k", "2", "--n-iter", "1", "--quiet", "--out", str(d / "made.png")])
    assert rc in (0, None) and (d / "made.json").exists()
    return d


def output_cases(d: Path):
    m = d / "model"
    B = ["basis", "--model", m, "--steps", "3", "--k", "2", "--quiet"]
    return {
        "png_is_the_mask": (B + ["--space", "x0", "--mask", d / "region.png", "--out", d / "n.safetensors",
                                 "--png", d / "region.png"], "is the input --mask"),
        "edit_out_is_the_mask": (["edit", "--model", m, "--space", "x0", "--mask", d / "region_b.png", "--steps", "3",
                                  "--k", "2", "--quiet", "--out", d / "region_b.png"], "is the input --mask"),
        "global_out_is_the_mask": (["global", "--model", m, "--space", "x0", "--mask", d / "region.safetensors",
                                    "--samples", "2", "--steps", "3", "--k", "2", "--quiet",
                                    "--out", d / "region.safetensors"], "is the input --mask"),
        "replay_out_is_the_recipes_mask": (["edit", "--recipe", d / "made.json", "--out", d / "region.png"],
                                           "is the input the recipe's mask"),
        "out_is_the_models_weights": (B + ["--out", m / "diffusion_pytorch_model.safetensors", "--png", ""],
                                      "is a file of the input --model"),
        "png_is_the_models_config": (B + ["--out", d / "n.safetensors", "--png", m / "config.json"],
                                     "is a file of the input --model"),
    }


@pytest.mark.parametrize("name", sorted(output_cases(Path("d"))))
def test_no_output_is_a_file_the_command_reads(name, region_ws, capsys):
    args, says = output_cases(region_ws)[name]
    before = snapshot(region_ws)
    rc, err = run_main(args, capsys)
    assert rc == 2 and len(err) == 1 and says in err[0], err
    assert "please report" not in err[0]
    assert snapshot(region_ws) == before


@pytest.fixture(scope="module")
def other_layer_basis(tmp_path_factory, tiny_unet_dir):
    """A basis of the tiny model at another layer than its default (mid_block)."""
    d = tmp_path_factory.mktemp("other_layer")
    f = d / "down1.safetensors"
    rc = main(["basis", "--model", str(tiny_unet_dir), "--layer", "down_blocks.1", "--steps", "3", "--k", "2",
               "--quiet", "--out", str(f), "--png", ""])
    assert rc in (0, None) and f.exists()
    return f


@pytest.mark.parametrize("case", ["edit_basis", "basis_init", "basis_init_other_layer_named"])
def test_a_basis_of_another_layer_is_refused(case, other_layer_basis, tiny_unet_dir, tmp_path, capsys):
    m = tiny_unet_dir
    args = {"edit_basis": ["edit", "--model", m, "--basis", other_layer_basis, "--steps", "3", "--n-iter", "1",
                           "--quiet", "--out", tmp_path / "e.png"],
            "basis_init": ["basis", "--model", m, "--init", other_layer_basis, "--steps", "3", "--k", "2",
                           "--quiet", "--out", tmp_path / "b.safetensors", "--png", ""],
            "basis_init_other_layer_named": ["basis", "--model", m, "--layer", "up_blocks.0", "--init",
                                             other_layer_basis, "--steps", "3", "--k", "2", "--quiet",
                                             "--out", tmp_path / "b.safetensors", "--png", ""]}[case]
    rc, err = run_main(args, capsys)
    assert rc == 2 and len(err) == 1 and "computed at the layer 'down_blocks.1'" in err[0], err
    assert "please report" not in err[0]
    assert list(tmp_path.iterdir()) == []


def test_a_basis_of_another_layer_is_refused_in_the_app(other_layer_basis, app):
    E, model, found = app
    with pytest.raises(E.AppError, match="computed at the layer"):
        E.import_basis(model, found, str(other_layer_basis))


def test_a_basis_of_its_own_layer_is_taken_as_init(other_layer_basis, tiny_unet_dir, tmp_path, capsys):
    rc, err = run_main(["basis", "--model", tiny_unet_dir, "--layer", "down_blocks.1", "--init", other_layer_basis,
                        "--steps", "3", "--k", "2", "--quiet", "--out", tmp_path / "b.safetensors", "--png", ""], capsys)
    assert rc in (0, None) and (tmp_path / "b.safetensors").exists(), err


@pytest.fixture(scope="module")
def report_cache(tmp_path_factory, tiny_unet_dir):
    from latentbasis.grid import check_cache, compute_grid, GridSpec
    from latentbasis.loading import load_model

    model = load_model(str(tiny_unet_dir))
    spec = GridSpec(seeds=[0, 1], timesteps=[900, 300], k=2, num_steps=6)
    cache = check_cache(model, spec, tmp_path_factory.mktemp("report") / "cache")
    compute_grid(model, spec, cache, progress=False)
    other = GridSpec(seeds=[0, 1], timesteps=[900, 300], k=3, num_steps=6)
    other_cache = check_cache(model, other, tmp_path_factory.mktemp("report_k3") / "cache")
    compute_grid(model, other, other_cache, progress=False)
    return model, spec, cache, other_cache


@pytest.mark.parametrize("case,says", [("timesteps_swapped", "its timestep is 300"),
                                       ("samples_swapped", "another x_t"),
                                       ("entry_of_a_k3_report", "its k is 3")])
def test_a_report_cache_entry_is_held_to_its_key(case, says, report_cache, tmp_path):
    from latentbasis.grid import compute_grid, load_grid

    model, spec, cache, other_cache = report_cache
    work = tmp_path / "cache"
    shutil.copytree(cache, work)
    a, b = {"timesteps_swapped": ("p0/s0/t0900.safetensors", "p0/s0/t0300.safetensors"),
            "samples_swapped": ("p0/s0/t0300.safetensors", "p0/s1/t0300.safetensors"),
            "entry_of_a_k3_report": ("p0/s1/t0900.safetensors", None)}[case]
    if b is None:
        shutil.copy(other_cache / a, work / a)
    else:
        tmp = work / "swap"
        os.replace(work / a, tmp)
        os.replace(work / b, work / a)
        os.replace(tmp, work / b)
    before = snapshot(work)
    from latentbasis.errors import LatentBasisError

    assert compute_grid(model, spec, work, progress=False) == 0     # every entry there: nothing recomputed
    with pytest.raises(LatentBasisError, match=says):                # and what the report reads is refused
        load_grid(model, spec, work)
    assert snapshot(work) == before


def _basis_args(m, out, png=""):
    return ["basis", "--model", m, "--steps", "3", "--k", "2", "--quiet", "--out", out, "--png", png]


@pytest.mark.parametrize("case", ["basis_out_empty", "edit_out_blank", "report_out_empty", "name_of_300_bytes",
                                  "png_name_of_256_bytes"])
def test_output_names_the_file_system_cannot_take(case, tiny_unet_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)          # an empty path must not mean "here"
    m = tiny_unet_dir
    args, says = {
        "basis_out_empty": (_basis_args(m, ""), "argument --out: is empty"),
        "edit_out_blank": (["edit", "--model", m, "--steps", "3", "--k", "2", "--quiet", "--out", "  "],
                           "argument --out: is empty"),
        "report_out_empty": (["report", "--model", m, "--samples", "2", "--timesteps", "2", "--k", "2", "--steps", "3",
                              "--quiet", "--out", ""], "argument --out: is empty"),
        "name_of_300_bytes": (_basis_args(m, tmp_path / ("b" * 290 + ".safetensors")), "at most 255"),
        "png_name_of_256_bytes": (_basis_args(m, tmp_path / "b.safetensors", tmp_path / ("é" * 126 + ".png")),
                                  "at most 255"),
    }[case]
    rc, err = run_main(args, capsys)
    assert rc == 2 and len(err) == 1 and says in err[0], err
    assert "please report" not in err[0]
    assert list(tmp_path.iterdir()) == []


def test_a_legal_long_name_is_written(tiny_unet_dir, tmp_path, capsys):
    """250 characters: legal, though the temporary name beside it would not be, unshortened."""
    out = tmp_path / ("b" * 238 + ".safetensors")
    assert len(out.name) == 250
    rc, err = run_main(_basis_args(tiny_unet_dir, out), capsys)
    assert rc in (0, None) and out.exists(), err
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def _disk_full(*a, **k):
    raise OSError(28, "No space left on device")


class SafetensorError(Exception):     # what safetensors raises, by its name
    pass


@pytest.mark.parametrize("case", ["basis_file", "edit_png", "edit_recipe"])
def test_a_full_disk_is_one_line_and_the_earlier_file_survives(case, tiny_unet_dir, tmp_path, capsys, monkeypatch):
    import safetensors.torch
    from PIL import Image

    earlier = {"basis_file": tmp_path / "b.safetensors", "edit_png": tmp_path / "e.png",
               "edit_recipe": tmp_path / "e.json"}[case]
    earlier.write_bytes(b"an earlier output")
    if case == "basis_file":
        def full(*a, **k):
            raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                                  "\"No space left on device\" }) (os error 28): No space left on device")
        monkeypatch.setattr(safetensors.torch, "save_file", full)
        args = _basis_args(tiny_unet_dir, earlier)
    else:
        if case == "edit_png":
            monkeypatch.setattr(Image.Image, "save", _disk_full)
        else:
            monkeypatch.setattr(Path, "write_text", _disk_full)
        args = ["edit", "--model", tiny_unet_dir, "--steps", "3", "--k", "2", "--n-iter", "1", "--quiet",
                "--out", tmp_path / "e.png"]
    before = snapshot(tmp_path)
    rc, err = run_main(args, capsys)
    assert rc == 2 and len(err) == 1 and "No space left on device" in err[0] and earlier.name in err[0], err
    assert "please report" not in err[0]
    after = snapshot(tmp_path)
    assert after == before             # the earlier file whole, nothing else written
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_a_picture_that_cannot_be_written_leaves_the_earlier_basis_file(tiny_unet_dir, tmp_path, capsys,
                                                                        monkeypatch):
    """`basis --out B --png P` with P unwritable (a full disk): the basis file written first does not replace the
    earlier one, and no picture or temporary file is left: the command writes both or neither."""
    from matplotlib.figure import Figure

    earlier = tmp_path / "b.safetensors"
    earlier.write_bytes(b"an earlier output")
    before = snapshot(tmp_path)
    monkeypatch.setattr(Figure, "savefig", _disk_full)
    rc, err = run_main(_basis_args(tiny_unet_dir, earlier, tmp_path / "b.png"), capsys)
    assert rc == 2 and len(err) == 1 and "No space left on device" in err[0] and "b.png" in err[0], err
    assert snapshot(tmp_path) == before


def test_outputs_of_one_block_appear_together_or_not_at_all(tmp_path):
    from latentbasis.atomic import all_or_nothing, write_text_atomic

    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("old a")
    with pytest.raises(KeyboardInterrupt):          # an interrupt after the first output was complete
        with all_or_nothing():
            write_text_atomic(a, "new a")
            assert a.read_text() == "old a"         # not yet: it waits for the block
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"] and a.read_text() == "old a"
    with all_or_nothing():
        write_text_atomic(a, "new a")
        with all_or_nothing():                      # an inner block belongs to the outer one
            write_text_atomic(b, "new b")
        assert not b.exists()
    assert (a.read_text(), b.read_text()) == ("new a", "new b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_a_writer_never_removes_another_live_writers_temporary_file(tmp_path):
    """Two writers of one path: the one that finishes first leaves the other's temporary file alone (its process
    runs), and removes one whose process is gone."""
    from latentbasis.atomic import atomic_path, temporary_name

    target = tmp_path / "out.json"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        theirs = tmp_path / temporary_name(target.name, f"{live.pid}-0123abcd")
        theirs.write_text("being written")
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
        left = tmp_path / temporary_name(target.name, f"{dead}-89abcdef")
        left.write_text("left by a killed writer")
        with atomic_path(target) as tmp:
            Path(tmp).write_text("{}")
        assert target.read_text() == "{}"
        assert theirs.exists() and theirs.read_text() == "being written"
        assert not left.exists()
    finally:
        live.kill()


def test_the_apps_temporary_root_is_private_and_never_followed(app, tmp_path, monkeypatch):
    """A link planted where the app's root goes (pointing at someone's folder, with a folder in it named like a
    stale session): nothing there is followed or removed; the app works in a fresh private folder, sessions 0700."""
    import stat

    E, model, _ = app
    victim = tmp_path / "victim"
    (victim / "999999999-deadbeefdead").mkdir(parents=True)
    (victim / "999999999-deadbeefdead" / "precious.txt").write_text("keep me")
    (victim / "notes.txt").write_text("keep me too")
    planted = tmp_path / "latentbasis-app"
    planted.symlink_to(victim)
    monkeypatch.setattr(E, "WORK", WorkRoot(planted))
    before = snapshot(victim)
    assert E.WORK.remove_stale() == 0
    s = E.Session()
    assert snapshot(victim) == before and planted.is_symlink()
    root = Path(s.workdir).parent
    assert root != planted and not root.is_symlink() and stat.S_IMODE(os.lstat(root).st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(s.workdir).st_mode) == 0o700
    s.close()


def test_the_app_cleans_only_folders_it_made(app, tmp_path, monkeypatch):
    E, model, _ = app
    root = tmp_path / "root"
    root.mkdir(mode=0o755)
    monkeypatch.setattr(E, "WORK", WorkRoot(root))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data.txt").write_text("not the app's")
    (root / "999999998-0123456789ab").symlink_to(outside)      # a stale-looking name, but a link
    (root / "999999997-notmadebyapp").mkdir()                  # a dead pid, but not a name the app makes
    (root / "999999996-0123456789ab").mkdir()                  # one the app made, its process gone
    assert E.WORK.remove_stale() == 1
    assert (outside / "data.txt").read_text() == "not the app's"
    assert (root / "999999997-notmadebyapp").exists() and not (root / "999999996-0123456789ab").exists()
    assert oct(os.lstat(root).st_mode & 0o777) == oct(0o700)    # this user's own root, made private


def test_an_oversized_painted_layer_is_a_message(app):
    E, model, _ = app
    huge = np.broadcast_to(np.zeros((1, 1, 4), np.uint8), (7001, 7001, 4))    # 49 megapixels, no memory
    with pytest.raises(E.AppError, match="40,000,000"):
        E.region_mask(model, {"layers": [huge]})


@pytest.fixture(scope="module")
def bin_models(tmp_path_factory):
    """Folders with .bin weights only: a good one, a corrupt one, and one with no weights at all."""
    from conftest import ddpm_scheduler, tiny_unet

    d = tmp_path_factory.mktemp("bin_models")
    for name in ("good", "corrupt", "none"):
        tiny_unet().save_pretrained(d / name, safe_serialization=False)
        ddpm_scheduler().save_pretrained(d / name)
    (d / "corrupt" / "diffusion_pytorch_model.bin").write_bytes(b"not a checkpoint")
    (d / "none" / "diffusion_pytorch_model.bin").unlink()
    return d


@pytest.mark.parametrize("case,says", [("corrupt", "could not load"), ("none", "could not load"),
                                       ("time_embedding", "does not change with x_t"),
                                       ("time_embedding_subspace", "does not change with x_t"),
                                       ("train_on_cuda", "no CUDA GPU")])
def test_messages_are_latentbasis_own_one_line(case, says, bin_models, tiny_unet_dir, tmp_path, capfd):
    """No library's line before latentbasis' own, no catch-all for a layer h that x_t does not reach, no message
    said twice."""
    if case == "train_on_cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is here")
    base = ["--steps", "3", "--k", "2", "--quiet", "--out", tmp_path / "b.safetensors", "--png", ""]
    args = {"corrupt": ["basis", "--model", bin_models / "corrupt"] + base,
            "none": ["basis", "--model", bin_models / "none"] + base,
            "time_embedding": ["basis", "--model", tiny_unet_dir, "--layer", "time_embedding"] + base,
            "time_embedding_subspace": ["basis", "--model", tiny_unet_dir, "--layer", "time_embedding",
                                        "--algorithm", "subspace"] + base,
            "train_on_cuda": ["train", "--dataset", "digits", "--device", "cuda", "--out", tmp_path / "t"]}[case]
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:
        rc = e.code
    err = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and says in err[0], err
    assert "please report" not in err[0]
    if case == "train_on_cuda":
        assert err[0].count("device 'cuda'") == 1, err[0]        # said once, not twice
    assert list(tmp_path.iterdir()) == []


def test_a_bin_checkpoint_loads_without_a_library_line(bin_models, tmp_path, capfd):
    rc = main(["basis", "--model", str(bin_models / "good"), "--steps", "3", "--k", "2", "--quiet", "--out",
               str(tmp_path / "b.safetensors"), "--png", ""])
    assert rc in (0, None) and (tmp_path / "b.safetensors").exists()
    assert capfd.readouterr().err.strip() == ""


@pytest.mark.parametrize("case", ["all_nan", "one_inf", "nan_in_a_bias"])
def test_weights_that_are_not_numbers_are_refused_at_load(case, tiny_unet_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    md = tmp_path / "model"
    shutil.copytree(tiny_unet_dir, md)
    f = md / "diffusion_pytorch_model.safetensors"
    w = load_file(f)
    names = sorted(w)
    if case == "all_nan":
        w = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in w.items()}
    elif case == "one_inf":
        w[names[0]] = w[names[0]].clone().flatten().index_fill(0, torch.tensor([0]), float("inf")).reshape(
            w[names[0]].shape)
    else:
        bias = next(k for k in names if k.endswith("bias"))
        w[bias] = w[bias].clone().fill_(float("nan"))
    save_file(w, str(f))
    out = tmp_path / "b.safetensors"
    rc, err = run_main(["basis", "--model", md, "--steps", "3", "--k", "2", "--quiet", "--out", out, "--png", ""],
                       capsys)
    assert rc == 2 and len(err) == 1 and "NaN or infinite" in err[0] and "please report" not in err[0], err
    assert not out.exists()


@pytest.fixture(scope="module")
def region_basis(tmp_path_factory, tiny_unet_dir):
    d = tmp_path_factory.mktemp("region_basis")
    f = d / "region.safetensors"
    rc = main(["basis", "--model", str(tiny_unet_dir), "--space", "x0", "--mask", "2,2,6,6", "--steps", "3", "--k",
               "2", "--quiet", "--out", str(f), "--png", ""])
    assert rc in (0, None) and f.exists()
    return f


def _retold(src: Path, dst: Path, mask=None, drop=()):
    """A copy of a basis file with another region (its sha256 updated, so only the geometry can tell) or header
    fields dropped."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from latentbasis.masks import mask_sha256

    with safe_open(str(src), framework="pt") as fh:
        meta = dict(fh.metadata())
        tensors = {n: fh.get_tensor(n) for n in fh.keys()}
    if mask is not None:
        tensors["mask"] = mask.float()
        meta["mask_sha256"] = mask_sha256(mask.bool())
    for key in drop:
        meta.pop(key, None)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def _box(size, x0, y0, x1, y1):
    m = torch.zeros(size, size, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.mark.parametrize("case,says", [("larger_region", "the mask is not theirs"),
                                       ("smaller_region", "the mask is not theirs"),
                                       ("region_of_another_size", "this model's images are 8x8"),
                                       ("no_timestep", "without the timestep")])
def test_a_region_basis_is_held_to_its_region(case, says, region_basis, tiny_unet_dir, tmp_path, capsys):
    told = {"larger_region": lambda f: _retold(region_basis, f, mask=_box(8, 1, 1, 7, 7)),
            "smaller_region": lambda f: _retold(region_basis, f, mask=_box(8, 3, 3, 5, 5)),
            "region_of_another_size": lambda f: _retold(region_basis, f, mask=_box(16, 4, 4, 12, 12)),
            "no_timestep": lambda f: _retold(region_basis, f, drop=("timestep", "t_fraction"))}[case]
    f = told(tmp_path / "told.safetensors")
    rc, err = run_main(["edit", "--model", tiny_unet_dir, "--basis", f, "--mask", "2,2,6,6", "--steps", "3",
                        "--n-iter", "1", "--quiet", "--out", tmp_path / "e.png"], capsys)
    assert rc == 2 and len(err) == 1 and says in err[0], err
    assert "please report" not in err[0]
    assert not (tmp_path / "e.png").exists()


def test_a_painted_layer_file_is_held_to_the_limit_before_decoding(app, tmp_path):
    """The page sends the painted layer as a file: its size is read from the header and refused before any pixel
    is decoded (a 49-megapixel transparent PNG is a few hundred kilobytes)."""
    from PIL import Image

    E, model, _ = app
    f = tmp_path / "layer.png"
    Image.new("LA", (7001, 7001)).save(f, format="PNG")
    with pytest.raises(E.AppError, match="40,000,000"):
        E.region_mask(model, {"layers": [str(f)]})
    small = tmp_path / "small.png"
    a = np.zeros((8, 8, 4), np.uint8)
    a[:4, :4, 3] = 255
    Image.fromarray(a).save(small, format="PNG")
    assert int(E.region_mask(model, {"layers": [str(small)]}).sum()) == 16
