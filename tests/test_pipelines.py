"""latentbasis.pipelines: the user's own diffusers pipeline objects (from_pipeline) and edits inside their call
(edit_callback), checked against load_model on the same folder and against latentbasis' own sampler edit."""
import pytest
import torch
from helpers import own_edit

from latentbasis import LatentBasisError, latent_basis, load_model, principal_angles
from latentbasis.loading import MODELS_DIR, read_folder
from latentbasis.pipelines import edit_callback, from_pipeline
from latentbasis.sampling import initial_noise

PROMPT = "the digit seven"


def _ddim(folder):
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config({**read_folder(folder)[1], "set_alpha_to_one": True})


def _sd_pipe(folder):
    """The tiny SD folder read by diffusers itself (not by latentbasis), with a DDIM scheduler."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False, scheduler=_ddim(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _angle(a, b) -> float:
    return float(principal_angles(a.latent, b.latent).max().rad2deg())


def test_a_ddim_pipeline_of_the_bundled_digits_gives_load_models_basis():
    from diffusers import DDIMPipeline, UNet2DModel

    folder = MODELS_DIR / "digits"
    pipe = DDIMPipeline(unet=UNet2DModel.from_pretrained(str(folder)), scheduler=_ddim(folder))
    ours, theirs = load_model("digits", device="cpu"), from_pipeline(pipe)
    assert theirs.model_hash == ours.model_hash and theirs.x_shape == ours.x_shape
    x = torch.randn(ours.x_shape, generator=torch.Generator().manual_seed(5))
    a = latent_basis(ours, x, t=0.6, k=4, tol=1e-5)
    b = latent_basis(theirs, x, t=0.6, k=4, tol=1e-5)
    assert _angle(a, b) < 0.1 and not b.latent.requires_grad     # the pipe's weights ask for gradients; the basis not
    torch.testing.assert_close(a.singular_values, b.singular_values, rtol=1e-4, atol=0)


def test_a_text_pipeline_is_wrapped_in_place_without_loading(tiny_sd_dir):
    pipe = _sd_pipe(tiny_sd_dir)
    before = {k: v.data_ptr() for k, v in pipe.unet.state_dict().items()}
    m, ref = from_pipeline(pipe), load_model(str(tiny_sd_dir), device="cpu")
    assert m.unet is pipe.unet and m.vae is pipe.vae and m.text_encoders[0] is pipe.text_encoder
    assert {k: v.data_ptr() for k, v in pipe.unet.state_dict().items()} == before      # nothing copied or cast
    assert m.model_hash == ref.model_hash and m.device == pipe.device and m.dtype == pipe.unet.dtype
    x = torch.randn(m.x_shape, generator=torch.Generator().manual_seed(2))
    a = latent_basis(ref, x, timestep=500, k=3, prompt=PROMPT, tol=1e-5)
    b = latent_basis(m, x, timestep=500, k=3, prompt=PROMPT, tol=1e-5)
    assert _angle(a, b) < 0.1


@pytest.mark.parametrize("method", ["guidance", "direct"])
def test_an_edit_inside_the_users_pipeline_call_equals_latentbasis_own_edit(tiny_sd_dir, method):
    """Same initial noise, DDIM scheduler and 8 steps: the pipeline's image with edit_callback equals edit_images on
    latentbasis' own trajectory to 1e-4 (and differs from the unedited image)."""
    pipe = _sd_pipe(tiny_sd_dir)
    m = from_pipeline(pipe)
    pipe.scheduler.set_timesteps(8)
    x_T = initial_noise(m, 3)[None]
    strength = 2.0 if method == "guidance" else 0.5
    basis, _, _, ours = own_edit(m, x_T, pipe.scheduler.timesteps.tolist(), PROMPT, 3.0, at=3, direction=1,
                                 strength=strength, method=method)

    cb = edit_callback(basis, 1, strength, method=method, prompt=PROMPT, n_iter=4)
    theirs = pipe(PROMPT, num_inference_steps=8, guidance_scale=3.0, latents=x_T.clone(), eta=0.0,
                  output_type="latent", callback_on_step_end=cb).images.cpu()
    plain = pipe(PROMPT, num_inference_steps=8, guidance_scale=3.0, latents=x_T.clone(), eta=0.0,
                 output_type="latent").images.cpu()
    assert cb.fired
    assert float((theirs - ours).abs().max()) < 1e-4
    assert float((theirs - plain).abs().max()) > 1e-2


def test_unsupported_pipelines_and_foreign_bases_are_refused(tiny_sd_dir, tiny_unet_dir):
    from diffusers import EulerDiscreteScheduler

    class Fake:
        components = {"unet": torch.nn.Linear(2, 2), "scheduler": None}

    for obj in (Fake(), "a folder name", None):
        with pytest.raises(LatentBasisError, match="StableDiffusionXLPipeline"):   # the message names them
            from_pipeline(obj)
    pipe = _sd_pipe(tiny_sd_dir)
    m = from_pipeline(pipe)
    x_T = initial_noise(m, 1)[None]
    other = load_model(str(tiny_unet_dir), device="cpu")
    foreign = latent_basis(other, torch.randn(other.x_shape), timestep=500, k=2)
    with pytest.raises(LatentBasisError, match="another model"):
        pipe(PROMPT, num_inference_steps=4, latents=x_T.clone(), output_type="latent",
             callback_on_step_end=edit_callback(foreign, 0, 1.0, prompt=PROMPT))
    pipe.scheduler.set_timesteps(8)
    basis = latent_basis(m, x_T[0], timestep=int(pipe.scheduler.timesteps[2]), k=2, prompt=PROMPT)
    with pytest.raises(LatentBasisError, match="not a state of this pipeline call"):
        pipe(PROMPT, num_inference_steps=5, latents=x_T.clone(), output_type="latent",
             callback_on_step_end=edit_callback(basis, 0, 1.0, prompt=PROMPT))
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(LatentBasisError, match="sigma-scaled"):
        pipe(PROMPT, num_inference_steps=8, latents=x_T.clone(), output_type="latent",
             callback_on_step_end=edit_callback(basis, 0, 1.0, prompt=PROMPT))
    for bad in (dict(direction=2), dict(direction=True), dict(strength=float("nan")), dict(method="paint")):
        with pytest.raises(LatentBasisError):
            edit_callback(basis, **{"direction": 0, "strength": 1.0, **bad})


def test_the_app_takes_a_wrapped_pipeline():
    """launch_app(model) serves the editor over from_pipeline's model as over load_model's."""
    pytest.importorskip("gradio")
    import urllib.request

    from diffusers import DDIMPipeline, UNet2DModel

    from latentbasis import launch_app

    folder = MODELS_DIR / "digits"
    model = from_pipeline(DDIMPipeline(unet=UNet2DModel.from_pretrained(str(folder)), scheduler=_ddim(folder)))
    demo, url = launch_app(model, block=False)
    try:
        assert "latentbasis editor" in urllib.request.urlopen(url, timeout=30).read().decode()
    finally:
        demo.close()


def test_sd35_pipeline_from_pipeline_and_an_edit_inside_its_call(tiny_sd35_dir):
    """An SD3.5-configured StableDiffusion3Pipeline (flow matching): from_pipeline gives load_model's basis, and
    the edit inside its call (fed latentbasis' grid as unshifted sigmas) equals latentbasis' own to 1e-4."""
    from diffusers import StableDiffusion3Pipeline

    from latentbasis.sampling import trajectory_grid

    pipe = StableDiffusion3Pipeline.from_pretrained(str(tiny_sd35_dir))
    pipe.set_progress_bar_config(disable=True)
    m = from_pipeline(pipe)
    grid, x_T = trajectory_grid(m.num_train_timesteps, 6), initial_noise(m, 4)[None]
    b, _, angle, ours = own_edit(m, x_T, grid, PROMPT, 2.0, folder=tiny_sd35_dir)
    assert angle < 0.1
    cb = edit_callback(b, 0, 2.0, prompt=PROMPT, n_iter=4)
    theirs = pipe(PROMPT, num_inference_steps=len(grid), guidance_scale=2.0, latents=x_T.clone(),
                  sigmas=[(t + 1) / m.num_train_timesteps for t in grid], output_type="latent",
                  callback_on_step_end=cb).images.cpu()
    assert cb.fired and float((theirs - ours).abs().max()) < 1e-4
