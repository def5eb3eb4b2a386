"""Time the localization of single 640x480 queries against a map grown to N database images.

The map built by `featloc map` (e.g. 100 rendered views) is replicated up to N images: every
extra database image is a copy of a real one (same local features and 3D point ids) whose
global descriptor is the real one plus Gaussian noise (re-normalised), so retrieval
searches N descriptors and matching / PnP do the work of a real N-image database.
Per-stage seconds (median over the queries, after one warm-up query):

    .venv/bin/python scripts/loc_timing.py --map MAP_DIR --kapture-queries Q_KAPTURE \
        --num-db 1000 [--num-loc 10] [--num-queries 10]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from featloc.io.images import read_image
from featloc.loc.localize import Localizer, read_query_cameras
from featloc.loc.retrieval import read_global


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--map", type=Path, required=True)
    parser.add_argument("--kapture-queries", type=Path, required=True)
    parser.add_argument("--num-db", type=int, default=1000)
    parser.add_argument("--num-loc", type=int, default=10)
    parser.add_argument("--num-queries", type=int, default=10)
    parser.add_argument("--noise", type=float, default=0.01, help="std of the descriptor noise")
    parser.add_argument("--index", default="flat", choices=["flat", "ivf", "hnsw"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    info = json.loads((args.map / "map.json").read_text())
    real = info["global_names"]
    descs = read_global(args.map / info["files"]["global"], real)
    rng = np.random.default_rng(0)
    sources = [real[i % len(real)] for i in range(len(real), args.num_db)]
    extra = descs[[real.index(s) for s in sources]] + rng.normal(0, args.noise, (len(sources), descs.shape[1]))
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    names = real + [f"replica_{i:05d}_{s}" for i, s in enumerate(sources)]
    tic = time.perf_counter()
    loc = Localizer(args.map, {"num_loc": args.num_loc, "index": args.index},
                    np.concatenate([descs, extra.astype(np.float32)]), names)
    for name, src in zip(names[len(real):], sources, strict=True):
        loc.db_features[name] = loc.db_features[src]
        loc.map.point3D_ids[name] = loc.map.point3D_ids[src]
    setup = time.perf_counter() - tic

    query_dir, cameras = read_query_cameras(kapture=args.kapture_queries)
    queries = list(cameras)[: args.num_queries + 1]
    rows = []
    for k, name in enumerate(queries):
        image = read_image(query_dir / name)
        tic = time.perf_counter()
        result = loc.localize_image(image, cameras[name])
        total = time.perf_counter() - tic
        if k:  # the first query warms caches up
            rows.append({**result.info["timings"], "total_s": total, "localized": result.localized})
    med = {key: float(np.median([r[key] for r in rows])) for key in rows[0] if key != "localized"}
    print(json.dumps({
        "database_images": len(names), "real_images": len(real), "num_loc": args.num_loc,
        "index": args.index, "descriptor_dim": int(descs.shape[1]),
        "image_size": list(image.shape[1::-1]), "queries_timed": len(rows),
        "localized": sum(r["localized"] for r in rows), "load_map_s": round(setup, 3),
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "max_total_s": round(max(r["total_s"] for r in rows), 4),
    }, indent=1))


if __name__ == "__main__":
    main()
