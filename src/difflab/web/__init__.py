"""difflab's web app (`difflab serve`): generate, edit, explore and watch training in a browser.

A thin layer over the library: every tab calls what the command line calls (the Generator,
difflab.viz, the run folders a training run writes), so the page and `difflab sample` draw
the same images for the same seed. Modules:

- `limits`: what one request may ask for, and the folders the app may open;
- `models`: the checkpoints and runs under those folders, and the loaded Generators;
- `generate`, `edit`, `explore`, `runs`: each tab's handlers, plain functions;
- `streaming`, `errors`, `training_data`: live previews, failures and warnings as the page
  shows them, the training data behind the health warnings;
- `app`: the gradio page wired to the handlers; `command`: `difflab serve`.

gradio is an optional dependency (the `web` extra): only `app` and `command.serve_main`
import it.
"""
