"""Step: image retrieval with global descriptors, a faiss index and top-k pairs files.

Global descriptors are components of the registry kind "global" (`featloc.config`):

- `vlad` (default): VLAD (Jegou et al. 2010) of the image's own local descriptors (RootSIFT
  by default, read from the same cached feature file the matcher uses) over a k-means
  vocabulary fitted on the *database* descriptors; intra-normalised and power-normalised
  (Arandjelovic & Zisserman 2013), then L2-normalised. No training data beyond the database.
- `gradhist`: a cheap image-only baseline, a spatial pyramid (1x1, 2x2, 4x4) of gradient
  orientation histograms with Hellinger normalisation.
- `netvlad`, `gem` (featloc/loc/learned.py): learned NetVLAD / GeM pooling over the dense
  maps of the project's SAMFeat-lite network, trained with `featloc train` (task
  `retrieval`), weights loaded by preset name or `weights=PATH`.

Extension point: subclass `GlobalDescriptor` (`input = "image"` or "local_features"),
implement `describe` (and `describe_batch` where a batch is faster, `fingerprint` where
weights outside the conf decide the output) and add the class to `_REGISTRY["global"]` in
featloc/config.py. Storage, indexing and pairs do not change.

Storage: one HDF5 file per configuration (`GlobalStore`: one group per image, dataset
`global_descriptor` [D] float32, L2-normalised), resumable like `run_extract` (per-image
digest of the configuration, the fitted state and the image/features). A fitted state (the
VLAD vocabulary) is saved as `.npz` next to the database descriptors and reused for queries.

Search: inner product on L2-normalised vectors with faiss: exact `IndexFlatIP` by default;
`ivf` (IndexIVFFlat, nlist ~ 4 sqrt(N), `nprobe` lists searched) or `hnsw` (IndexHNSWFlat)
keep a million-image database fast (pair them with a smaller vocabulary, e.g. 16 words =
2,048 dims, to bound memory). Pairs files are hloc's (`query db` per line, best first);
self-pairs are excluded when queries and database are the same images.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..batch import BatchReport, digest, file_digest
from ..config import build, resolved_conf
from ..io.h5 import FeatureStore, GlobalStore, conf_attrs
from ..io.images import ImageReadError, list_images, read_image
from ..io.pairs import write_pairs
from ..progress import track
from ..types import Features
from . import DEFAULT_GLOBAL
from .cache import extract_features

logger = logging.getLogger(__name__)

INDEX_KINDS = ("flat", "ivf", "hnsw")


def _faiss():
    # faiss logs at INFO which optimised builds it could not load; only the result matters.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    return faiss


# -- global descriptors -------------------------------------------------------------------
@dataclass(frozen=True)
class GlobalConf:
    pass


class GlobalDescriptor:
    """An image-level descriptor for retrieval.

    Subclasses set `Conf`, `input` ("image": `describe(image=...)` gets the uint8 RGB image;
    "local_features": `describe(features=...)` gets the image's stored local `Features`,
    extracted with `local_features()`), and `needs_fit` when a state (e.g. a vocabulary) is
    fitted on the database with `fit` and kept with `state`/`load_state`. `describe` returns
    a [D] float32 L2-normalised vector (all zeros when the image has no content).
    """

    Conf = GlobalConf
    input = "image"
    needs_fit = False

    def __init__(self, conf: GlobalConf | None = None):
        self.conf = conf if conf is not None else self.Conf()

    def local_features(self) -> tuple[str, dict] | None:
        """(extractor name, conf) of the local features this descriptor aggregates."""
        return None

    def fit(self, items: Iterable) -> None:
        """Fit the state on the database: its local `Features` (input "local_features") or
        its uint8 RGB images (input "image")."""
        raise NotImplementedError

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        pass

    def describe(self, image: np.ndarray | None = None, features: Features | None = None) -> np.ndarray:
        raise NotImplementedError

    def describe_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Descriptors of several images (input "image"); override where batching helps."""
        return [self.describe(image=image) for image in images]

    def fingerprint(self) -> str | None:
        """What decides the output beyond the conf (e.g. a digest of a weights file); it
        enters the cache digest, so retrained weights never reuse stale descriptors."""
        return None


def _l2(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return (v / norm if norm > 0 else v).astype(np.float32)


@dataclass(frozen=True)
class VLADConf(GlobalConf):
    features: str = "rootsift-loc"  # local extractor whose descriptors are aggregated
    num_words: int = 64  # vocabulary size; the descriptor has num_words x D dimensions
    vocab_max_descriptors: int = 100_000  # database descriptors sampled for k-means
    kmeans_iterations: int = 25
    power: float = 0.5  # signed power normalisation exponent (1: off)
    intra_normalization: bool = True  # L2-normalise each word's residual sum first
    seed: int = 0  # sampling and k-means seed


class VLAD(GlobalDescriptor):
    """VLAD over the image's local descriptors with a database-fitted vocabulary."""

    Conf = VLADConf
    input = "local_features"
    needs_fit = True

    def __init__(self, conf: VLADConf | None = None):
        super().__init__(conf)
        if self.conf.num_words < 1:
            raise ValueError(f"num_words must be >= 1, got {self.conf.num_words}")
        self.vocabulary: np.ndarray | None = None

    def local_features(self) -> tuple[str, dict]:
        return self.conf.features, {}

    def fit(self, features: Iterable[Features]) -> None:
        faiss = _faiss()

        descs = [f.descriptors for f in features if len(f)]
        if not descs:
            raise ValueError("VLAD: the database has no local descriptors to fit a vocabulary")
        data = np.concatenate(descs).astype(np.float32)
        rng = np.random.default_rng(self.conf.seed)
        if len(data) > self.conf.vocab_max_descriptors:
            data = data[rng.choice(len(data), self.conf.vocab_max_descriptors, replace=False)]
        k = min(self.conf.num_words, len(data))
        kmeans = faiss.Kmeans(data.shape[1], k, niter=self.conf.kmeans_iterations,
                              seed=self.conf.seed, verbose=False)
        kmeans.train(np.ascontiguousarray(data))
        self.vocabulary = np.asarray(kmeans.centroids, np.float32)

    def state(self) -> dict[str, np.ndarray]:
        return {"vocabulary": self.vocabulary}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.vocabulary = np.asarray(state["vocabulary"], np.float32)

    def describe(self, image=None, features: Features | None = None) -> np.ndarray:
        if self.vocabulary is None:
            raise RuntimeError("VLAD: fit or load a vocabulary first")
        words = self.vocabulary
        out = np.zeros(words.shape, np.float32)
        if features is not None and len(features):
            desc = features.descriptors.astype(np.float32)
            if desc.shape[1] != words.shape[1]:
                raise ValueError(f"VLAD: {desc.shape[1]}-d descriptors for a "
                                 f"{words.shape[1]}-d vocabulary")
            dist = (desc * desc).sum(1, keepdims=True) - 2 * desc @ words.T + (words * words).sum(1)
            assign = np.argmin(dist, 1)
            onehot = np.zeros((len(desc), len(words)), np.float32)
            onehot[np.arange(len(desc)), assign] = 1
            out = onehot.T @ desc - onehot.sum(0)[:, None] * words
            if self.conf.intra_normalization:
                norms = np.linalg.norm(out, axis=1, keepdims=True)
                out = np.where(norms > 0, out / np.maximum(norms, 1e-12), 0)
        v = out.reshape(-1)
        if self.conf.power != 1:
            v = np.sign(v) * np.abs(v) ** self.conf.power
        return _l2(v)


@dataclass(frozen=True)
class GradientHistogramConf(GlobalConf):
    width: int = 128  # the image is resized to width x height first
    height: int = 96
    bins: int = 8  # unsigned orientation bins over [0, pi)
    levels: int = 3  # spatial pyramid levels: 1x1, 2x2, 4x4, ...


class GradientHistogram(GlobalDescriptor):
    """Spatial pyramid of gradient orientation histograms (magnitude-weighted), each cell
    L1-normalised and square-rooted (Hellinger), so global gain and gamma changes cancel."""

    Conf = GradientHistogramConf

    def describe(self, image: np.ndarray | None = None, features=None) -> np.ndarray:
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        gray = cv2.resize(gray, (self.conf.width, self.conf.height), interpolation=cv2.INTER_AREA)
        gray = np.log1p(gray.astype(np.float32))  # gain-invariant gradients
        gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
        mag = np.hypot(gx, gy)
        ori = np.mod(np.arctan2(gy, gx), np.pi)
        b = np.minimum((ori / np.pi * self.conf.bins).astype(np.int64), self.conf.bins - 1)
        h, w = gray.shape
        cells = []
        for level in range(self.conf.levels):
            n = 2**level
            ys = np.minimum(np.arange(h) * n // h, n - 1)
            xs = np.minimum(np.arange(w) * n // w, n - 1)
            cell = (ys[:, None] * n + xs[None, :]) * self.conf.bins + b
            hist = np.bincount(cell.ravel(), mag.ravel(), n * n * self.conf.bins)
            hist = hist.reshape(n * n, self.conf.bins)
            hist /= np.maximum(hist.sum(1, keepdims=True), 1e-12)
            cells.append(np.sqrt(hist).ravel() / n)  # finer levels weigh less in total
        return _l2(np.concatenate(cells))


def build_global(name: str = DEFAULT_GLOBAL, conf: dict | None = None) -> GlobalDescriptor:
    return build("global", name, **(conf or {}))


# -- computing and storing ------------------------------------------------------------------
@dataclass
class GlobalFiles:
    """Where the global descriptors of an image set are stored."""

    descriptors: Path  # GlobalStore file
    state: Path | None  # fitted state (.npz), None for descriptors without one
    local_features: Path | None  # local feature file aggregated (None: image input)
    names: list[str]  # images with a descriptor
    report: BatchReport


def _state_digest(state: dict[str, np.ndarray]) -> str:
    h = hashlib.blake2b(digest_size=8)
    for key in sorted(state):
        h.update(key.encode())
        h.update(np.ascontiguousarray(state[key]).tobytes())
    return h.hexdigest()


def _save_state(path: Path, state: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, **state)
    tmp.replace(path)


def compute_global(
    image_dir: str | Path,
    work_dir: str | Path,
    name: str = DEFAULT_GLOBAL,
    conf: dict | None = None,
    names: Sequence[str] | None = None,
    state: str | Path | None = None,
    overwrite: bool = False,
) -> GlobalFiles:
    """Global descriptors of the images `names` below `image_dir`, stored in `work_dir`.

    Args:
        state: for descriptors with a fitted state (VLAD): None fits it on these images (a
            database) and saves it in `work_dir` (reused on re-runs); a path loads it (the
            database's state, for queries).
    Returns:
        The files and the names that got a descriptor (unreadable images are reported in
        `report.failures` and left out).
    """
    image_dir, work_dir = Path(image_dir), Path(work_dir)
    model = build_global(name, conf)
    resolved = resolved_conf(name, model)
    names = list_images(image_dir) if names is None else list(names)
    if not names:
        raise ValueError(f"{image_dir}: no images to describe")
    local_path = None
    report = BatchReport(f"global {name}")
    if model.input == "local_features":
        local_name, local_conf = model.local_features()
        local_path, local_report = extract_features(image_dir, work_dir, local_name, local_conf, names)
        report.failures.update(local_report.failures)
    state_path, state_digest = None, None
    if model.needs_fit:
        if state is None:
            fstore = FeatureStore(local_path, "r") if local_path is not None else None
            try:
                fit_names = [n for n in names if fstore is None or n in fstore]
                sources = [fstore.entry_attrs(n).get("digest") if fstore else n for n in fit_names]
                state_path = work_dir / f"global-{name}-{digest(resolved, fit_names, sources)}.state.npz"
                refit = overwrite or not state_path.is_file()
                if not refit:
                    model.load_state(dict(np.load(state_path)))
                elif fstore is not None:
                    model.fit(fstore.read(n) for n in track(fit_names, desc=f"fit {name}"))
                else:  # a fitted descriptor over images
                    model.fit(read_image(image_dir / n) for n in track(fit_names, desc=f"fit {name}"))
            finally:
                if fstore is not None:
                    fstore.close()
            if refit:
                _save_state(state_path, model.state())
                logger.info("%s: fitted on %d images -> %s", name, len(fit_names), state_path)
        else:
            state_path = Path(state)
            if not state_path.is_file():
                raise FileNotFoundError(f"{state_path}: no fitted {name} state (vocabulary)")
            model.load_state(dict(np.load(state_path)))
        state_digest = _state_digest(model.state())
    else:
        state_digest = model.fingerprint()
    output = work_dir / f"global-{name}-{digest(resolved, state_digest)}.h5"
    conf_digest = digest(resolved, state_digest)
    finished = set()
    pending: list[tuple[str, np.ndarray, str]] = []  # images waiting for a batched describe
    batch_size = max(1, int(getattr(model.conf, "batch_size", 1)))
    fstore = FeatureStore(local_path, "r") if local_path is not None else None
    try:
        with GlobalStore(output, "a", attrs=conf_attrs(resolved, state=str(state_path))) as store:

            def flush() -> None:
                vectors = model.describe_batch([image for _, image, _ in pending])
                for (image_name, _, entry), vector in zip(pending, vectors, strict=True):
                    store.write(image_name, vector, attrs={"digest": entry})
                    report.done += 1
                    finished.add(image_name)
                pending.clear()

            for image_name in track(names, desc=f"global {name}"):
                if fstore is not None:
                    if image_name not in fstore:
                        continue  # extraction failed: already reported
                    source = fstore.entry_attrs(image_name).get("digest")
                else:
                    try:
                        source = file_digest(image_dir / image_name)
                    except OSError as exc:
                        report.fail(image_name, f"{image_dir / image_name}: {exc.strerror or exc}")
                        continue
                entry = digest(conf_digest, source)
                if not overwrite and image_name in store and store.entry_attrs(image_name).get("digest") == entry:
                    report.skipped += 1
                    finished.add(image_name)
                    continue
                if fstore is not None:
                    store.write(image_name, model.describe(features=fstore.read(image_name)),
                                attrs={"digest": entry})
                    report.done += 1
                    finished.add(image_name)
                    continue
                try:
                    image = read_image(image_dir / image_name)
                except ImageReadError as exc:
                    report.fail(image_name, str(exc))
                    continue
                pending.append((image_name, image, entry))
                if len(pending) >= batch_size:
                    flush()
            if pending:
                flush()
    finally:
        if fstore is not None:
            fstore.close()
    report.log_summary()
    done = [n for n in names if n in finished]
    return GlobalFiles(output, state_path, local_path, done, report)


def read_global(path: str | Path, names: Sequence[str]) -> np.ndarray:
    """[N, D] float32 descriptors of `names` from a GlobalStore file."""
    with GlobalStore(path, "r") as store:
        if not names:
            return np.zeros((0, 0), np.float32)
        return np.stack([store.read(n) for n in names])


# -- index and pairs ------------------------------------------------------------------------------
@dataclass(frozen=True)
class IndexConf:
    kind: str = "flat"  # flat (exact) | ivf | hnsw
    nlist: int = 0  # ivf: number of lists; 0: 4 sqrt(N) (at most N / 39, faiss' minimum)
    nprobe: int = 16  # ivf: lists searched per query
    hnsw_m: int = 32  # hnsw: graph degree
    ef_search: int = 128  # hnsw: search breadth

    def __post_init__(self):
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {self.kind!r}")


class GlobalIndex:
    """Inner-product search over L2-normalised database descriptors (cosine similarity)."""

    def __init__(self, descriptors: np.ndarray, names: Sequence[str], conf: IndexConf | None = None):
        faiss = _faiss()

        self.conf = conf or IndexConf()
        self.names = list(names)
        data = np.ascontiguousarray(np.asarray(descriptors, np.float32))
        if data.ndim != 2 or len(data) != len(self.names):
            raise ValueError(f"{len(self.names)} names for descriptors of shape {data.shape}")
        if not len(data):
            raise ValueError("the database is empty: nothing to retrieve from")
        n, d = data.shape
        kind = self.conf.kind
        if kind == "ivf" and n < 39:
            logger.info("ivf index needs >= 39 images; %d: exact search instead", n)
            kind = "flat"
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "ivf":
            nlist = self.conf.nlist or int(np.clip(4 * np.sqrt(n), 1, max(1, n // 39)))
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(data)
            index.nprobe = min(self.conf.nprobe, nlist)
            self._quantizer = quantizer  # keep it alive as long as the index
        else:
            index = faiss.IndexHNSWFlat(d, self.conf.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = self.conf.ef_search
        index.add(data)
        self.index = index

    def __len__(self) -> int:
        return len(self.names)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """[M, k] similarities and [M, k] database indices (-1 where fewer than k)."""
        queries = np.ascontiguousarray(np.asarray(queries, np.float32).reshape(-1, self.index.d))
        k = max(1, min(int(k), len(self.names)))
        return self.index.search(queries, k)


def retrieve(
    query_descriptors: np.ndarray,
    query_names: Sequence[str],
    index: GlobalIndex,
    num_matched: int,
    exclude_self: bool = False,
) -> dict[str, list[tuple[str, float]]]:
    """Top `num_matched` database (name, similarity) per query, best first. With
    `exclude_self`, a database image with the query's name is skipped (same image set)."""
    extra = 1 if exclude_self else 0
    scores, indices = index.search(query_descriptors, num_matched + extra)
    out = {}
    for qname, row_s, row_i in zip(query_names, scores, indices, strict=True):
        hits = [(index.names[i], float(s)) for s, i in zip(row_s, row_i, strict=True) if i >= 0]
        if exclude_self:
            hits = [h for h in hits if h[0] != qname]
        out[qname] = hits[:num_matched]
    return out


def pairs_from_retrieval(retrieved: dict[str, list[tuple[str, float]]]) -> list[tuple[str, str]]:
    return [(q, db) for q, hits in retrieved.items() for db, _ in hits]


def run_retrieval(
    db_dir: str | Path,
    query_dir: str | Path | None,
    output: str | Path,
    work_dir: str | Path | None = None,
    name: str = DEFAULT_GLOBAL,
    conf: dict | None = None,
    num_matched: int = 10,
    index: IndexConf | dict | None = None,
    db_names: Sequence[str] | None = None,
    query_names: Sequence[str] | None = None,
) -> Path:
    """Write a pairs file with the `num_matched` most similar database images per query.

    Queries default to the database itself (`query_dir` None or the same folder), in which
    case self-pairs are excluded (mapping pairs). Descriptors are cached in `work_dir`
    (default: a `retrieval-cache` folder next to `output`); the database state (VLAD
    vocabulary) is fitted on the database only.
    """
    db_dir = Path(db_dir)
    query_dir = db_dir if query_dir is None else Path(query_dir)
    output = Path(output)
    work_dir = Path(work_dir) if work_dir is not None else output.parent / "retrieval-cache"
    same = query_dir.resolve() == db_dir.resolve()
    db = compute_global(db_dir, work_dir / "db", name, conf, db_names)
    if not db.names:
        raise ValueError(f"{db_dir}: the database is empty (no readable images)")
    if same and query_names is None:
        queries = db
    else:
        queries = compute_global(query_dir, work_dir / "query", name, conf, query_names, state=db.state)
    idx_conf = index if isinstance(index, IndexConf) else IndexConf(**(index or {}))
    gindex = GlobalIndex(read_global(db.descriptors, db.names), db.names, idx_conf)
    retrieved = retrieve(read_global(queries.descriptors, queries.names), queries.names, gindex,
                         num_matched, exclude_self=same)
    pairs = pairs_from_retrieval(retrieved)
    if not pairs:
        raise ValueError("retrieval found no pairs")
    write_pairs(output, pairs)
    logger.info("retrieval: %d pairs for %d queries -> %s", len(pairs), len(retrieved), output)
    return output
