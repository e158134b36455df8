"""Saliency: where the model looked for each finding it states.

Modules: `maps` (captum attribution of each finding sentence's log-probability w.r.t. the vision tower;
overlays), `targets` (which tokens and which image region each map explains), `layers` (which vision layers
are explained, per architecture), `depth` (`medr2 saliency-depth`: per-finding vision-block weights chosen on
validation phantoms, written to a model's `saliency.json`). Hands on: one heat map per finding. Details: docs/saliency.md.
"""

# The stage's public names in one place: other stages, tests and benchmarks use `from medr2 import saliency` and
# never reach into the modules below.
from medr2.saliency.layers import (
                                   DEFAULT_LAYER,
                                   LAYERS,
                                   SUPPORTED_ARCHS,
                                   LayerProbe,
                                   PatchLayout,
                                   SaliencyUnavailable,
                                   layer_for,
                                   layers_for,
                                   patch_layout,
                                   qwen_patch_order,
                                   vlm_arch,
                                   vlm_base,
                                   vlm_part,
)
from medr2.saliency.maps import (
                                   DEFAULT_METHOD,
                                   DEPTH_FILE,
                                   IG_STEPS,
                                   METHODS,
                                   PER_LAYER,
                                   SaliencyMap,
                                   SaliencyResult,
                                   attribute,
                                   depth_rows,
                                   explain,
                                   fuse_layers,
                                   grid_map,
                                   layer_maps,
                                   legend_image,
                                   normalise,
                                   occlude,
                                   overlay,
                                   token_logprobs,
                                   upsample,
)
from medr2.saliency.targets import (
                                   EVIDENCE_MIN,
                                   Target,
                                   evidence_share,
                                   locate_targets,
                                   plausible_region,
                                   token_char_spans,
                                   token_weights,
)

__all__ = ["DEFAULT_LAYER", "LAYERS", "SUPPORTED_ARCHS", "LayerProbe", "PatchLayout", "SaliencyUnavailable", "layer_for", "layers_for", "patch_layout",
           "qwen_patch_order", "vlm_arch", "vlm_base", "vlm_part", "DEFAULT_METHOD", "grid_map", "DEPTH_FILE", "IG_STEPS", "METHODS", "PER_LAYER",
           "SaliencyMap", "SaliencyResult", "attribute", "depth_rows", "explain", "fuse_layers", "layer_maps", "legend_image",
           "normalise", "occlude", "overlay", "token_logprobs", "upsample", "EVIDENCE_MIN", "Target", "evidence_share",
           "locate_targets", "plausible_region", "token_char_spans", "token_weights"]
