"""The page: four tabs of gradio components wired to the handlers of generate, edit, explore
and runs, which do the work through the library (Generator, viz) as the CLI does.

    app = build_app(Roots(["runs"]))
    launch(app, host="127.0.0.1", port=7860)

Every event goes through gradio's queue. Events that sample share one concurrency group of
`limits.concurrency` workers, so a burst of requests waits its turn instead of sampling at
once and running out of memory; the light ones (a model's defaults, a run's curves) have a
group of their own and never wait behind sampling. A handler that fails raises `gr.Error`
with the one line `errors.describe_failure` gives, shown on the page and returned by the API;
the app goes on serving.

Each sampling event has an API name (/generate, /img2img, /inpaint, /forward, /schedules,
/compare, /run), so that gradio_client and the load test (bench/web_load.py) call what the
page calls.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from difflab.pipeline import DEFAULT_IMG2IMG_STRENGTH
from difflab.pipeline.inputs import MAX_IMAGE_PIXELS
from difflab.web import edit, explore, generate, runs
from difflab.web.errors import install_warning_router, page_error
from difflab.web.generate import NO_CLASS, Request
from difflab.web.limits import Limits, Roots
from difflab.web.models import ModelStore, find_runs, model_choices
from difflab.web.uploads import refuse_unreadable_uploads

if TYPE_CHECKING:
    import gradio as gr

TITLE = "difflab"
DEFAULT_MODEL = "fashion-mnist"
EDIT_MODEL = "fashion-text"
SAMPLING = "sampling"  # the concurrency group of every event that runs a network
LIGHT_CONCURRENCY = 4
RUN_REFRESH_S = 5.0
# Pictures of 28x28 samples are shown enlarged: without this a browser blurs them.
CSS = ".pixelated img, img.pixelated { image-rendering: pixelated; }"


def _shown_errors(fn: Callable) -> Callable:
    """Run a handler; any failure becomes a gr.Error with its one line (the traceback of a
    bug goes to the server's log). Works for plain and generator handlers."""
    import gradio as gr  # the web extra: imported only when the app is built
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def streaming(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as e:
                raise page_error(gr, e) from e

        return streaming

    @functools.wraps(fn)
    def plain(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as e:
            raise page_error(gr, e) from e

    return plain


def _notes(lines: list[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)


def _gallery(images, captions: list[str] | None = None) -> list[tuple[np.ndarray, str]]:
    captions = captions or [f"#{i}" for i in range(len(images))]
    return [(generate.to_hwc(img), cap) for img, cap in zip(images, captions, strict=True)]


def _describe_model(gen) -> str:
    c, h, w = gen.image_shape
    kind = "latent" if gen.autoencoder is not None else "pixel"
    cond = "text prompts" if gen.takes_text else (
        f"{gen.num_classes} classes" if gen.num_classes is not None else "unconditional")
    trained = gen.config.get("trained", {})
    step = f", {trained['step']:,} training steps" if trained.get("step") else ""
    return f"{kind} diffusion, {h}x{w}x{c}, {cond}{step}"


def _bounds_told_by_handler(slider: Any) -> Any:
    """`slider` passing what the API sends to the handler as it is: gradio's own check of the
    range refuses 2.0 for a strength in words that name neither the field nor its flag, and
    logs a traceback; the handlers check the same range in difflab's one line
    (edit.strength_value, explore._time_value)."""
    slider.preprocess = lambda payload: payload
    return slider


def build_app(roots: Roots, limits: Limits | None = None,
              store: ModelStore | None = None) -> gr.Blocks:
    """The gradio Blocks of the app (not yet launched); `roots`: the folders it may open."""
    import gradio as gr  # the web extra: imported only when the app is built
    limits = limits or Limits()
    store = store or ModelStore(roots)
    install_warning_router()
    models = model_choices(roots)
    samplers = generate.sampler_names()
    heavy = {"concurrency_limit": limits.concurrency, "concurrency_id": SAMPLING}
    light = {"concurrency_limit": LIGHT_CONCURRENCY, "api_visibility": "undocumented"}

    def model_form(name: str):
        """The form of a model: its classes, whether it reads text, its own defaults."""
        gen = store.load(name)
        d = generate.defaults(gen)
        choices = generate.class_choices(gen)
        return (
            gr.update(choices=choices, value=NO_CLASS, visible=gen.num_classes is not None),
            gr.update(visible=gen.takes_text),
            gr.update(visible=gen.takes_text),
            gr.update(value=d["sampler"]),
            gr.update(value=d["steps"]),
            # blank (its own), not 0, for a model that keeps a guide: 0 would ask for guidance
            # on top of its autoguidance, which the library refuses
            gr.update(value=d["guidance"] if d["guidance"] is not None
                      else None if d["autoguidance"] is not None else 0,
                      visible=gen.conditional),
            # only for a model that keeps a guide (train.guide_at); blank (its own) otherwise
            gr.update(value=d["autoguidance"], visible=d["autoguidance"] is not None),
            # only for a text model reading word pieces; its own scales, 0 where it has none
            gr.update(value=d["relation_guidance"], visible=d["relation_guidance"] is not None),
            gr.update(value=d["binding_guidance"], visible=d["binding_guidance"] is not None),
            # only for a text model; on where the model draws relations by regions
            gr.update(value=bool(d["relation_regions"]),
                      visible=d["relation_regions"] is not None),
            _describe_model(gen),
        )

    def sampler_steps(name: str, sampler: str):
        return generate.steps_for(store.load(name), sampler)

    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(
            "# difflab\nDraw from a shipped model or your own checkpoints, edit images, see "
            "the noise process and watch training runs. Checkpoints and runs are opened from: "
            + ", ".join(f"`{roots.display(f)}`" for f in roots.folders)
        )
        with gr.Tabs():
            # ------------------------------------------------------------ Generate
            with gr.Tab("Generate", id="generate", elem_id="tab-generate"):
                with gr.Row():
                    with gr.Column(scale=1):
                        g_model = gr.Dropdown(models, value=DEFAULT_MODEL, label="model",
                                              allow_custom_value=True, elem_id="gen-model",
                                              info="a shipped model, or a checkpoint folder")
                        g_info = gr.Markdown(elem_id="gen-model-info")
                        g_class = gr.Dropdown([NO_CLASS], value=NO_CLASS, label="class",
                                              elem_id="gen-class", visible=False,
                                              allow_custom_value=True)  # the API's too
                        g_prompt = gr.Textbox(label="prompt", elem_id="gen-prompt",
                                              visible=False)
                        g_negative = gr.Textbox(label="negative prompt", visible=False,
                                                elem_id="gen-negative")
                        with gr.Row():
                            # allow_custom_value on every sampler list: a name gradio does
                            # not know is refused by difflab's check, in its one line with
                            # the allowed names, not by gradio's multi-line report
                            g_sampler = gr.Dropdown(samplers, value="dpmpp_2m",
                                                    label="sampler", elem_id="gen-sampler",
                                                    allow_custom_value=True)
                            # No precision=0 on any number field: gradio would round 2.5
                            # to 2 and fail on NaN with its own multi-line error before
                            # difflab's whole_number could refuse the value in one line.
                            g_steps = gr.Number(20, label=f"steps (≤ {limits.max_steps})",
                                                elem_id="gen-steps")
                        with gr.Row():
                            # blank, not 0, until a model fills it (on_generate's default)
                            g_guidance = gr.Number(None, label="guidance", visible=False,
                                                   elem_id="gen-guidance")
                            g_autoguidance = gr.Number(
                                None, label="autoguidance (1: off)", visible=False,
                                elem_id="gen-autoguidance",
                                info="steer away from the run's earlier weights",
                            )
                            g_relation = gr.Number(
                                None, label="relation guidance (0: off)", visible=False,
                                elem_id="gen-relation",
                                info="place the objects of 'A left of B', 'A above B', ...",
                            )
                            g_binding = gr.Number(
                                None, label="binding guidance (0: off)", visible=False,
                                elem_id="gen-binding",
                                info="keep each colour on its own object",
                            )
                            g_regions = gr.Checkbox(
                                False, label="relation regions", visible=False,
                                elem_id="gen-regions",
                                info="draw each object of 'A left of B' on its own side first",
                            )
                            g_seed = gr.Number(0, label="seed", elem_id="gen-seed")
                            g_n = gr.Number(8, label=f"images (≤ {limits.max_images})",
                                            elem_id="gen-n")
                        g_gif = gr.Checkbox(True, label="reverse-process GIF")
                        g_go = gr.Button("Generate", variant="primary", elem_id="gen-go")
                    with gr.Column(scale=2):
                        g_preview = gr.Image(label="denoising", format="png", interactive=False,
                                             elem_id="gen-preview", elem_classes="pixelated",
                                             height=280)
                        g_gallery = gr.Gallery(label="samples (PNG, actual size)", format="png",
                                               columns=8, elem_id="gen-gallery", height="auto",
                                               elem_classes="pixelated", object_fit="contain",
                                               buttons=["download", "download_all"])
                        g_notes = gr.Markdown(elem_id="gen-notes")
                        with gr.Row():
                            g_gif_view = gr.Image(label="reverse process", interactive=False,
                                                  elem_id="gen-gif", elem_classes="pixelated")
                            g_files = gr.File(label="download: grid PNG, GIF",
                                              file_count="multiple", elem_id="gen-files")

            # ------------------------------------------------------------ Edit
            with gr.Tab("Edit", id="edit", elem_id="tab-edit"):
                with gr.Row():
                    with gr.Column(scale=1):
                        e_model = gr.Dropdown(models, value=EDIT_MODEL, label="model",
                                              allow_custom_value=True, elem_id="edit-model")
                        e_sketch = refuse_unreadable_uploads(gr.ImageEditor(
                            type="filepath", label="image: upload, then paint what to redraw "
                            "(inpainting)", sources=["upload"], elem_id="edit-image",
                            layers=False, transforms=(), elem_classes="pixelated",
                            brush=gr.Brush(colors=["#ff0000"], color_mode="fixed",
                                           default_size=2),
                        ), "image")
                        e_mask = refuse_unreadable_uploads(gr.Image(
                            type="filepath", image_mode=None, sources=["upload"],
                            label="mask (optional; white = redraw)", elem_id="edit-mask",
                            elem_classes="pixelated"), "mask")
                        e_prompt = gr.Textbox(label="prompt", elem_id="edit-prompt")
                        e_negative = gr.Textbox(label="negative prompt", elem_id="edit-negative")
                        e_strength = _bounds_told_by_handler(gr.Slider(
                            0, 1, DEFAULT_IMG2IMG_STRENGTH, step=0.05,
                            label="img2img strength (0 keeps the image)",
                            elem_id="edit-strength"))
                        with gr.Row():
                            e_sampler = gr.Dropdown(samplers, value="dpmpp_2m", label="sampler",
                                                    allow_custom_value=True)
                            e_steps = gr.Number(20, label="steps",
                                                elem_id="edit-steps")
                        with gr.Row():
                            e_guidance = gr.Number(3, label="guidance", elem_id="edit-guidance")
                            e_seed = gr.Number(0, label="seed")
                            e_n = gr.Number(4, label="images", elem_id="edit-n")
                        with gr.Row():
                            e_img2img = gr.Button("img2img", variant="primary",
                                                  elem_id="edit-img2img")
                            e_inpaint = gr.Button("inpaint", variant="primary",
                                                  elem_id="edit-inpaint")
                    with gr.Column(scale=2):
                        e_gallery = gr.Gallery(label="results", format="png", columns=8,
                                               elem_id="edit-gallery", elem_classes="pixelated",
                                               object_fit="contain", buttons=["download"])
                        e_notes = gr.Markdown(elem_id="edit-notes")
                        e_files = gr.File(label="download: grid PNG", elem_id="edit-files")

            # ------------------------------------------------------------ Explore
            with gr.Tab("Explore", id="explore", elem_id="tab-explore"):
                gr.Markdown("### The forward process q(x_t | x_0)")
                with gr.Row():
                    with gr.Column(scale=1):
                        x_model = gr.Dropdown(models, value=DEFAULT_MODEL, label="model",
                                              allow_custom_value=True, elem_id="fwd-model")
                        x_source = gr.Radio([explore.DATA_IMAGE, explore.UPLOAD],
                                            value=explore.DATA_IMAGE, label="image")
                        x_index = gr.Number(0, label="training image number")
                        x_upload = refuse_unreadable_uploads(gr.Image(
                            type="filepath", image_mode=None, sources=["upload"],
                            label="upload (model's size)"), "image")
                        x_t = _bounds_told_by_handler(
                            gr.Slider(0, 999, 500, step=1, label="t", elem_id="fwd-t"))
                        x_seed = gr.Number(0, label="noise seed")
                        x_go = gr.Button("Show the forward process", elem_id="fwd-go")
                    with gr.Column(scale=2):
                        x_picture = gr.Image(label="x_t at 0 / 25 / 50 / 75 / 100 % and at t",
                                             show_label=False, interactive=False,
                                             elem_id="fwd-picture")
                gr.Markdown("### Noise schedules")
                with gr.Row():
                    with gr.Column(scale=1):
                        s_T = gr.Number(1000, label="T (steps)")
                        s_go = gr.Button("Plot the schedules", elem_id="sched-go")
                    with gr.Column(scale=2):
                        s_picture = gr.Image(label="alpha_bar and log-SNR", interactive=False,
                                             show_label=False, elem_id="sched-picture")
                gr.Markdown("### Samplers side by side (same seed)")
                with gr.Row():
                    with gr.Column(scale=1):
                        c_model = gr.Dropdown(models, value=DEFAULT_MODEL, label="model",
                                              allow_custom_value=True, elem_id="cmp-model")
                        c_samplers = gr.Dropdown(samplers, value=["ddim", "dpmpp_2m"],
                                                 multiselect=True, label="samplers",
                                                 elem_id="cmp-samplers", allow_custom_value=True)
                        c_steps = gr.Textbox("5, 10, 20", label="step counts",
                                             elem_id="cmp-steps")
                        c_class = gr.Dropdown([NO_CLASS], value=NO_CLASS, label="class",
                                              visible=False, allow_custom_value=True)
                        c_prompt = gr.Textbox(label="prompt", visible=False)
                        with gr.Row():
                            c_seed = gr.Number(0, label="seed")
                            c_n = gr.Number(4, label=f"images per row (≤ "
                                            f"{limits.max_compare_images})")
                        c_go = gr.Button("Compare", elem_id="cmp-go")
                    with gr.Column(scale=2):
                        c_picture = gr.Image(label="one row per sampler and step count",
                                             show_label=False, format="png", interactive=False,
                                             elem_id="cmp-picture", elem_classes="pixelated")
                        c_notes = gr.Markdown(elem_id="cmp-notes")

            # ------------------------------------------------------------ Runs
            with gr.Tab("Runs", id="runs", elem_id="tab-runs"):
                with gr.Row():
                    r_run = gr.Dropdown(find_runs(roots), label="run", allow_custom_value=True,
                                        elem_id="run-pick", scale=3,
                                        info="training runs (folders with metrics.jsonl)")
                    r_list = gr.Button("Find runs", scale=1)
                    r_auto = gr.Checkbox(True, label=f"refresh every {RUN_REFRESH_S:g} s",
                                         scale=1)
                r_summary = gr.Markdown(elem_id="run-summary")
                with gr.Row():
                    r_loss = gr.Plot(label="loss", elem_id="run-loss", format="png")
                    r_fid = gr.Plot(label="FID", elem_id="run-fid", format="png")
                r_health = gr.Markdown(elem_id="run-health")
                r_grids = gr.Gallery(label="sample grids (newest first)", columns=3,
                                     format="png", elem_id="run-grids", object_fit="contain",
                                     elem_classes="pixelated")
                r_timer = gr.Timer(RUN_REFRESH_S, active=True)

        # ---------------------------------------------------------------- handlers
        form_outputs = [g_class, g_prompt, g_negative, g_sampler, g_steps, g_guidance,
                        g_autoguidance, g_relation, g_binding, g_regions, g_info]
        g_model.change(_shown_errors(model_form), g_model, form_outputs, **light)
        app.load(_shown_errors(model_form), g_model, form_outputs, **light)
        g_sampler.input(_shown_errors(sampler_steps), [g_model, g_sampler], g_steps, **light)

        # The API's default for a field whose form starts blank is the Python default here:
        # None, the model's own (guidance 0 would draw unconditionally, ignoring the prompt)
        def on_generate(model, condition, prompt, negative, sampler, steps, guidance=None,
                        seed=0, n=8, gif=True, autoguidance=None, relation_guidance=None,
                        binding_guidance=None, relation_regions=None,
                        progress=gr.Progress()):  # noqa: B008 (gradio's API)
            req = Request(model=model, condition=condition, prompt=prompt,
                          negative_prompt=negative, sampler=sampler, steps=steps,
                          guidance=guidance, autoguidance=autoguidance,
                          relation_guidance=relation_guidance,
                          binding_guidance=binding_guidance, relation_regions=relation_regions,
                          seed=seed, n=n, gif=bool(gif))
            progress(0, desc="loading the model")
            job = generate.run(store, limits, req)
            while True:
                try:
                    preview = next(job)
                except StopIteration as stop:
                    result = stop.value
                    break
                if preview.total:
                    progress((preview.step, preview.total), desc=preview.label, unit="steps")
                yield preview.image, gr.skip(), gr.skip(), gr.skip(), gr.skip()
            files = [str(result.grid)] + ([str(result.gif)] if result.gif else [])
            yield (result.preview, _gallery(result.images, result.captions), _notes(result.notes),
                   str(result.gif) if result.gif else None, files)

        g_go.click(
            _shown_errors(on_generate),
            [g_model, g_class, g_prompt, g_negative, g_sampler, g_steps, g_guidance, g_seed,
             g_n, g_gif, g_autoguidance, g_relation, g_binding, g_regions],
            [g_preview, g_gallery, g_notes, g_gif_view, g_files],
            api_name="generate", **heavy,
        )

        def edit_request(model, prompt, negative, sampler, steps, guidance, seed, n) -> Request:
            return Request(model=model, prompt=prompt, negative_prompt=negative,
                           sampler=sampler, steps=steps, guidance=guidance, seed=seed, n=n)

        def on_img2img(model, sketch, prompt, negative, strength, sampler, steps, guidance,
                       seed, n):
            req = edit_request(model, prompt, negative, sampler, steps, guidance, seed, n)
            out = edit.img2img(store, limits, req, sketch, strength)
            return _gallery(out.images), _notes(out.notes), str(out.grid)

        def on_inpaint(model, sketch, mask, prompt, negative, sampler, steps, guidance, seed,
                       n):
            req = edit_request(model, prompt, negative, sampler, steps, guidance, seed, n)
            out = edit.inpaint(store, limits, req, sketch, mask)
            return _gallery(out.images), _notes(out.notes), str(out.grid)

        common = [e_prompt, e_negative]
        settings = [e_sampler, e_steps, e_guidance, e_seed, e_n]
        e_img2img.click(_shown_errors(on_img2img),
                        [e_model, e_sketch, *common, e_strength, *settings],
                        [e_gallery, e_notes, e_files], api_name="img2img", **heavy)
        e_inpaint.click(_shown_errors(on_inpaint), [e_model, e_sketch, e_mask, *common,
                                                    *settings],
                        [e_gallery, e_notes, e_files], api_name="inpaint", **heavy)

        def edit_form(name: str):
            d = generate.defaults(store.load(name))
            return d["sampler"], d["steps"], d["guidance"] if d["guidance"] is not None else 0

        e_model.change(_shown_errors(edit_form), e_model, [e_sampler, e_steps, e_guidance],
                       **light)

        def time_slider(name: str):
            lo, hi, step = explore.time_range(store.load(name))
            middle = round((lo + hi) / 2) if step == 1.0 else (lo + hi) / 2
            return gr.update(minimum=lo, maximum=hi, step=step, value=middle)

        x_model.change(_shown_errors(time_slider), x_model, x_t, **light)

        def on_forward(model, source, index, upload, t, seed):
            return str(explore.forward(store, model, source, index, upload, t, seed))

        x_go.click(_shown_errors(on_forward), [x_model, x_source, x_index, x_upload, x_t,
                                               x_seed], x_picture, api_name="forward", **heavy)
        s_go.click(_shown_errors(lambda T: str(explore.schedules(T))), s_T, s_picture,
                   api_name="schedules", **light | {"api_visibility": "public"})

        def compare_form(name: str):
            gen = store.load(name)
            return (gr.update(choices=generate.class_choices(gen)[:-1] if gen.num_classes
                              is not None else [NO_CLASS], value=NO_CLASS,
                              visible=gen.num_classes is not None),
                    gr.update(visible=gen.takes_text))

        c_model.change(_shown_errors(compare_form), c_model, [c_class, c_prompt], **light)

        def on_compare(model, samplers_, steps_text, condition, prompt, seed, n,
                       progress=gr.Progress()):  # noqa: B008 (gradio's API)
            out = explore.compare(store, limits, model, samplers_, steps_text, condition,
                                  prompt, seed, n, progress=progress)
            return out.picture, _notes(out.notes)

        c_go.click(_shown_errors(on_compare), [c_model, c_samplers, c_steps, c_class, c_prompt,
                                               c_seed, c_n], [c_picture, c_notes],
                   api_name="compare", **heavy)

        def on_run(name: str | None):
            if not name:
                return ("no run chosen", gr.update(value=None, visible=False),
                        gr.update(value=None, visible=False), "", [])
            view = runs.view(roots, name)
            health = _notes(view.health) if view.health else "no health check yet"
            return (view.summary, gr.update(value=view.loss, visible=view.loss is not None),
                    gr.update(value=view.fid, visible=view.fid is not None), health, view.grids)

        run_outputs = [r_summary, r_loss, r_fid, r_health, r_grids]
        r_run.change(_shown_errors(on_run), r_run, run_outputs, api_name="run",
                     **light | {"api_visibility": "public"})
        r_timer.tick(_shown_errors(on_run), r_run, run_outputs, show_progress="hidden",
                     **light)
        r_auto.change(lambda on: gr.Timer(active=bool(on)), r_auto, r_timer, **light)
        r_list.click(lambda: gr.update(choices=find_runs(roots)), None, r_run, **light).then(
            _shown_errors(on_run), r_run, run_outputs, **light)

        def lists():
            """Checkpoints and runs as they are now: a page opened later sees new ones (and
            the newest run is shown)."""
            found = gr.update(choices=model_choices(roots))
            found_runs = find_runs(roots)
            run = gr.update(choices=found_runs, value=found_runs[0] if found_runs else None)
            return found, found, found, found, run

        app.load(lists, None, [g_model, e_model, x_model, c_model, r_run], **light).then(
            _shown_errors(on_run), r_run, run_outputs, **light)
    app.queue(default_concurrency_limit=limits.concurrency, max_size=limits.queue_size)
    return app


def launch(app: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860,
           limits: Limits | None = None, *, block: bool = True, quiet: bool = False) -> str:
    """Serve `app` on host:port (uploads over limits.max_upload_mb refused); returns its URL.
    `block=False` returns at once and serves on a thread (tests, the load benchmark)."""
    limits = limits or Limits()
    # gradio decodes the sketch pad's pictures itself, with PIL: make PIL's decompression-bomb
    # check (it refuses from the header a file that claims over twice this many pixels) as
    # strict as difflab's own reader, so a small upload cannot inflate to gigabytes here.
    Image.MAX_IMAGE_PIXELS = min(Image.MAX_IMAGE_PIXELS or MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS)
    _, url, _ = app.launch(
        server_name=host, server_port=port, prevent_thread_lock=True, ssr_mode=False,
        max_file_size=limits.max_upload_bytes, show_error=True, quiet=quiet, css=CSS,
        inbrowser=False, share=False,
        # gradio 6.31's only use of _frontend: after starting, it asks its own URL with one
        # 3-second timeout and, on a busy machine where the answer comes later, gives up with
        # "a shareable link must be created" while the server keeps running. A port that
        # cannot be bound fails before that check either way.
        _frontend=False,
    )
    if block:
        app.block_thread()
    return url

