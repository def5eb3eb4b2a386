"""Visual localization: image retrieval, (x, y) coordinates, and full 6-DoF poses.

One module per step, hloc-style; each step is a typed `run_<step>(...)` function that keeps
its work in HDF5 files named after their configuration (`featloc.loc.cache`), so a re-run
skips what is stored and resumes what was interrupted:

- `retrieval`: global descriptors (registry kind "global") -> faiss index -> top-k pairs
  (`run_retrieval`).
- `xy`: coordinates mode (COMP90086 style): retrieval, local matching, fundamental-matrix
  verification, then a weighted median / best-cluster / best-match estimate
  (`run_localize_xy`).
- `sfm`: a 3D map of the database: triangulation with known poses (COLMAP model or kapture,
  rigs included) or incremental SfM when poses are unknown (`run_map`).
- `localize`: per query, retrieval, matching, 2D-3D correspondences and PnP + refinement,
  giving a `featloc.types.LocResult` (`run_localize`, `Localizer` for in-memory use).

The defaults below are the project's best available components; change them here (one
constant each) when better ones (e.g. `samfeat-lite` + an attention matcher) are registered.
"""

from __future__ import annotations

# Local features and matcher of the localization pipelines (CLI defaults too). RootSIFT +
# mutual nearest neighbours with Lowe's ratio test (0.8) measured best among the registered
# components on rendered gallery scenes (100 database views, 30 evening queries).
DEFAULT_FEATURES = "rootsift-loc"
DEFAULT_MATCHER = "nn-ratio"
# Global descriptor for retrieval: VLAD over RootSIFT with a database vocabulary.
DEFAULT_GLOBAL = "vlad"

__all__ = ["DEFAULT_FEATURES", "DEFAULT_MATCHER", "DEFAULT_GLOBAL"]
