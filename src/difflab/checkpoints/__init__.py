"""Checkpoint folders: writing them atomically, reading them as untrusted input, resolving
names (a folder, or a shipped model), and the components beside the network (autoencoder,
caption bank). Training writes checkpoints and the pipeline reads them; both use this
package and neither imports the other (docs/design.md).

- `store`: save_checkpoint / load_checkpoint, manifests, NAME.prev fallback, debris, export.
- `names`: resolve_checkpoint and the shipped models in difflab/weights/.
- `components`: the autoencoder and caption bank a checkpoint carries.
"""
