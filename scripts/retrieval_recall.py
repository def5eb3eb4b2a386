"""Retrieval recall@k of global descriptors on rendered scenes (`featloc make-scenes`).

A query view is a hit at k when one of its k most similar database views overlaps it by at
least --min-overlap: both directional covisibilities (depth maps + poses of the two folders,
which must be renderings of the same scene, e.g. `--path db` and `--path query` with one
seed) reach it. The overlap matrix is cached in the query folder.

    .venv/bin/python scripts/retrieval_recall.py --db GAL_DB --queries GAL_Q \
        vlad gradhist netvlad:weights=outputs/train/netvlad-samfeat-lite/retrieval.pt
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from featloc.commands.common import parse_kv
from featloc.io.colmap import camera_from_colmap, read_model
from featloc.loc.retrieval import GlobalIndex, compute_global, read_global, retrieve
from featloc.synth.scenes import OVERLAP_STRIDE_PX, covisibility_matrix
from featloc.train.data.cache import digest


def _views(root: Path) -> tuple[list[str], list, list, list]:
    model = read_model(root / "sparse")
    cameras = {i: camera_from_colmap(c) for i, c in model.cameras.items()}
    images = sorted(model.images.values(), key=lambda im: im.name)
    depths = [np.load(root / "depth" / f"{Path(im.name).stem}.npy") for im in images]
    return ([im.name for im in images], depths, [cameras[im.camera_id] for im in images],
            [im.cam_from_world for im in images])


def overlap(db: Path, queries: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Query names, database names and [Q, D] min of the two directional covisibilities."""
    cache = queries / f"retrieval-overlap-{digest([str(db.resolve()), str(queries.resolve())])}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            return list(z["queries"]), list(z["db"]), z["overlap"]
    qn, qd, qc, qp = _views(queries)
    dn, dd, dc, dp = _views(db)
    cov = covisibility_matrix(qd + dd, qc + dc, qp + dp, OVERLAP_STRIDE_PX)
    q = len(qn)
    ov = np.minimum(cov[:q, q:], cov[q:, :q].T)
    np.savez(cache, queries=np.asarray(qn), db=np.asarray(dn), overlap=ov)
    return qn, dn, ov


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, required=True, help="make-scenes folder (database)")
    parser.add_argument("--queries", type=Path, required=True, help="make-scenes folder (queries)")
    parser.add_argument("--work", type=Path, default=Path("outputs/retrieval-recall"))
    parser.add_argument("--min-overlap", type=float, default=0.25)
    parser.add_argument("globals", nargs="+", help="NAME or NAME:key=value,key=value")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    qn, dn, ov = overlap(args.db, args.queries)
    reachable = (ov >= args.min_overlap).any(1)
    print(f"{reachable.sum()} of {len(qn)} queries overlap a database view by >= "
          f"{args.min_overlap}; recall over those")
    for spec in args.globals:
        name, _, options = spec.partition(":")
        conf = parse_kv([kv for kv in options.split(",") if kv])
        work = args.work / spec.replace("/", "_").replace(":", "_")
        tic = time.perf_counter()
        db = compute_global(args.db / "images", work / "db", name, conf, dn)
        q = compute_global(args.queries / "images", work / "q", name, conf, qn, state=db.state)
        seconds = time.perf_counter() - tic
        index = GlobalIndex(read_global(db.descriptors, db.names), db.names)
        hits = retrieve(read_global(q.descriptors, q.names), q.names, index, 10)
        col = {n: i for i, n in enumerate(dn)}
        best = np.array([[ov[i, col[d]] for d, _ in hits[n]] for i, n in enumerate(qn)])
        recall = {k: float(np.mean(best[reachable, :k].max(1) >= args.min_overlap))
                  for k in (1, 5, 10)}
        print(f"{spec}: R@1 {recall[1]:.3f}  R@5 {recall[5]:.3f}  R@10 {recall[10]:.3f}  "
              f"(top-1 mean overlap {best[:, 0].mean():.3f}; {seconds:.0f} s for "
              f"{len(dn) + len(qn)} images, cached on re-runs)")


if __name__ == "__main__":
    main()
