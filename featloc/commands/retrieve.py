"""featloc retrieve --db DIR [--queries DIR] --output PAIRS.txt [--num-matched K] [--global NAME]"""

from __future__ import annotations

from pathlib import Path

from ..loc import DEFAULT_GLOBAL
from . import common


def add_global_args(p) -> None:
    from ..config import available

    p.add_argument("--global", dest="global_name", default=DEFAULT_GLOBAL,
                   help=f"global descriptor: {', '.join(available('global'))}")
    p.add_argument("--global-conf", nargs="*", metavar="KEY=VALUE", default=[],
                   help="global descriptor options, e.g. num_words=16")
    p.add_argument("--index", default="flat", choices=["flat", "ivf", "hnsw"],
                   help="faiss index: exact inner product, or approximate for large databases")


def add_parser(sub, formatter):
    p = sub.add_parser(
        "retrieve",
        help="top-k database images per query by global descriptors (a pairs file)",
        description="Compute global descriptors (cached, resumable) of the database and "
        "query images, index the database with faiss (cosine similarity) and write hloc's "
        "pairs file: one 'query db' line per retrieved image, best first. Without --queries "
        "the database is matched against itself (mapping pairs, self-pairs excluded).",
        formatter_class=formatter,
    )
    p.add_argument("--db", type=Path, required=True, help="database image folder")
    p.add_argument("--queries", type=Path, default=None, help="query image folder (default: --db)")
    p.add_argument("--output", type=Path, required=True, help="pairs file to write")
    p.add_argument("--num-matched", type=int, default=10, help="database images per query")
    add_global_args(p)
    p.add_argument("--work", type=Path, default=None,
                   help="cache folder of descriptors (default: OUTPUT's folder/retrieval-cache)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..loc.retrieval import run_retrieval

    run_retrieval(args.db, args.queries, args.output, args.work, args.global_name,
                  common.parse_kv(args.global_conf), args.num_matched, {"kind": args.index})
    return 0
