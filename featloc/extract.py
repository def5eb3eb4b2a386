"""Step: extract local features for every image of a folder into an HDF5 feature file."""

from __future__ import annotations

import logging
from pathlib import Path

from .batch import BatchReport, digest, file_digest
from .config import build, resolved_conf
from .io.h5 import FeatureStore, conf_attrs
from .io.images import ImageReadError, list_images, read_image
from .progress import track

logger = logging.getLogger(__name__)


def run_extract(
    image_dir: str | Path,
    output: str | Path,
    features: str = "sift",
    conf: dict | None = None,
    names: list[str] | None = None,
    overwrite: bool = False,
) -> BatchReport:
    """Extract features of the images below `image_dir` (or only `names`) into `output`.

    Entries already stored with the same configuration and the same image bytes are skipped
    (unless `overwrite`); changed images or configurations are recomputed. Unreadable images
    are reported and skipped; the rest of the batch goes on.
    """
    image_dir = Path(image_dir)
    extractor = build("extractor", features, **(conf or {}))
    resolved = resolved_conf(features, extractor)
    conf_digest = digest(resolved)
    if names is None:
        names = list_images(image_dir)
    if not names:
        raise ValueError(f"{image_dir}: no image files found")
    report = BatchReport(f"extract {features}")
    with FeatureStore(output, "a", attrs=conf_attrs(resolved)) as store:
        for name in track(names, desc=f"extract {features}"):
            path = image_dir / name
            try:
                source = file_digest(path)
            except OSError as exc:
                report.fail(name, f"{path}: {exc.strerror or exc}")
                continue
            entry_digest = digest(conf_digest, source)
            if not overwrite and name in store and store.entry_attrs(name).get("digest") == entry_digest:
                report.skipped += 1
                continue
            try:
                image = read_image(path, grayscale=extractor.conf.grayscale)
            except ImageReadError as exc:
                report.fail(name, str(exc))
                continue
            store.write(name, extractor.extract(image), attrs={"digest": entry_digest})
            report.done += 1
    report.log_summary()
    return report
