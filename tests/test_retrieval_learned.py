"""Learned global descriptors (NetVLAD / GeM on SAMFeat-lite maps): the network, the `netvlad`
and `gem` global descriptors, the `retrieval` training task and its use by the retrieval
commands. One tiny trainer run (80 px views, 8 clusters, 64-d output) is shared."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from featloc.cli import main
from featloc.config import build
from featloc.features.samfeat import shipped_weights
from featloc.io.images import write_image
from featloc.models.retrieval import (
    RetrievalNet,
    RetrievalNetConf,
    build_retrieval_net,
    load_retrieval_net,
    save_retrieval_net,
)
from featloc.models.weights import shipped_weights as learned_weights
from featloc.synth.textures import random_scene_image
from featloc.train.conf import load_config
from featloc.train.tasks import retrieval as task

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "train" / "retrieval-smoke.yaml"
STEPS = 100


def _images(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [random_scene_image(rng, 120, 160, num_shapes=40) for _ in range(n)]


def _query(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A perspective warp of the image under another lighting (gamma 2, colour cast)."""
    h, w = image.shape[:2]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = (src + rng.uniform(-0.12, 0.12, (4, 2)) * [w, h]).astype(np.float32)
    warped = cv2.warpPerspective(image, cv2.getPerspectiveTransform(src, dst), (w, h),
                                 borderMode=cv2.BORDER_REFLECT)
    dark = 255 * (warped.astype(np.float32) / 255) ** 2.0 * np.float32([0.7, 0.8, 1.1])
    return np.clip(dark, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train-images")
    for i, image in enumerate(_images(0, 16)):
        write_image(root / f"img{i:02d}.png", image)
    return root


def _overrides(train_dir: Path, tmp: Path, *extra: str) -> list[str]:
    return [f"data.image_dirs=[{train_dir}]", f"data.cache_dir={tmp / 'cache'}",
            f"train.output_dir={tmp / 'run'}", *extra]


@pytest.fixture(scope="module")
def trained(train_dir, tmp_path_factory) -> Path:
    """A tiny run of the trainer (the run folder; weights in retrieval.pt)."""
    from featloc.train.trainer import train

    tmp = tmp_path_factory.mktemp("retrieval-run")
    return train(SMOKE, _overrides(train_dir, tmp, f"train.steps={STEPS}",
                                   "train.ckpt_interval=1000", "train.log_interval=10",
                                   "val.num_queries=16"))


def _net(**conf) -> RetrievalNet:
    torch.manual_seed(0)
    return build_retrieval_net(RetrievalNetConf(**conf), shipped_weights("lite"))


# -------------------------------------------------------------------------- network / descriptor


@pytest.mark.parametrize("pooling", ["netvlad", "gem"])
def test_shape_norm_and_batch_consistency(pooling, tmp_path):
    net = _net(pooling=pooling, num_clusters=4, gem_dim=32, output_dim=24)
    weights = save_retrieval_net(net, tmp_path / "w.pt")
    model = build("global", pooling, weights=str(weights), precision="float32", batch_size=3)
    images = _images(1, 4) + [random_scene_image(np.random.default_rng(2), 90, 100)]
    alone = np.stack([model.describe(image=image) for image in images])
    assert alone.shape == (5, 24) and alone.dtype == np.float32
    assert np.allclose(np.linalg.norm(alone, axis=1), 1, atol=1e-5)
    # batched (other sizes in the same call, chunks of 3) and permuted: the same vectors
    order = [4, 2, 0, 3, 1]
    batched = np.stack(model.describe_batch([images[i] for i in order]))
    assert np.allclose(batched, alone[order], atol=1e-5)
    gray = model.describe(image=cv2.cvtColor(images[0], cv2.COLOR_RGB2GRAY))
    assert gray.shape == (24,)
    # the weights decide the cache digest; the descriptor sizes come from the file
    assert model.descriptor_dim == 24 and len(model.fingerprint()) > 8


def test_missing_weights_name_the_file_and_the_command(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        build("global", "netvlad", weights="netvlad-absent")
    message = str(err.value)
    assert "weights/netvlad-absent.pt" in message
    assert "featloc train --config configs/train/netvlad-absent.yaml" in message
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build("global", "gem", weights=str(tmp_path / "nope.pt"))
    if not learned_weights("netvlad-samfeat-lite").is_file():  # before weights are shipped
        with pytest.raises(FileNotFoundError, match="netvlad-samfeat-lite.pt"):
            build("global", "netvlad")
    else:  # the shipped file loads offline by preset name
        assert build("global", "netvlad").descriptor_dim == 512


def test_netvlad_cluster_init_matches_nearest_centroid():
    """The k-means init turns the assignment conv into a peaky softmax(-alpha |x - c|^2)."""
    net = _net(num_clusters=4, output_dim=0)
    torch.manual_seed(1)
    centres = torch.nn.functional.normalize(torch.randn(4, 128), dim=1)
    x = torch.nn.functional.normalize(centres.repeat(50, 1) + 0.05 * torch.randn(200, 128), dim=1)
    net.pool.init_clusters(x, seed=0)
    assert bool(net.pool.clusters_initialized)
    logits = net.pool.assign(x.T.reshape(1, 128, 200, 1))[0, :, :, 0].T
    soft = torch.softmax(logits, 1)
    nearest = (x @ net.pool.centroids.T).argmax(1)
    assert torch.equal(soft.argmax(1), nearest) and soft.max(1).values.mean() > 0.9


def test_negatives_mask_respects_groups_and_covisibility():
    # items: 0 homographic (source 0); 1, 2 posed in scene group 5; 3 homographic (source 7)
    group = torch.tensor([0, 5, 5, 7])
    views = torch.tensor([[-1, -1], [0, 1], [2, 3], [-1, -1]])
    covisible = torch.zeros(4, 2, 4, dtype=torch.bool)
    covisible[1, 0, [0, 1]] = True
    covisible[1, 1, [0, 1, 2]] = True  # scene view 1 sees scene view 2
    covisible[2, 0, [1, 2, 3]] = True
    covisible[2, 1, [2, 3]] = True
    allowed = task.negatives_mask(group, views, covisible)
    # rows / columns: view 0 of items 0..3, then view 1 of items 0..3
    assert not allowed.diagonal().any()
    assert not any(allowed[i, (i + 4) % 8] for i in range(8))  # partners are positives
    assert allowed[0, 3] and allowed[0, 1] and allowed[4, 6]  # other groups
    assert not allowed[5, 2] and not allowed[2, 5]  # views 1 and 2 of the scene overlap
    assert allowed[1, 2] and allowed[1, 6] and allowed[5, 6]  # views that do not overlap
    desc = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    loss, metrics = task.info_nce(desc, allowed, 0.1)
    assert torch.isfinite(loss) and 0 <= metrics["accuracy"] <= 1
    # descriptors that put every partner closest give a lower loss
    good = torch.nn.functional.normalize(torch.eye(16)[:4].repeat(2, 1) + 0.01 * desc, dim=1)
    assert task.info_nce(good, allowed, 0.1)[0] < loss


def test_posed_items_carry_scene_covisibility(tmp_path):
    from featloc.synth.scenes import make_scenes

    rng = np.random.default_rng(3)
    for i in range(5):
        write_image(tmp_path / "tex" / f"t{i}.png", random_scene_image(rng, 192, 256, 80))
    scene = make_scenes(tmp_path / "tex", tmp_path / "scene", kind="room", num_views=12,
                        width=256, height=192, num_pairs=4, write_kapture=False)
    conf = load_config(SMOKE, [f"data.posed_scenes=[{scene}]", f"data.cache_dir={tmp_path / 'c'}",
                               "data.posed_min_overlap=0.0"])
    dataset = task.build_datasets(conf)["train"]
    assert len(dataset) == 4
    names, cov = task.scene_covisibility(scene, tmp_path / "c")
    assert cov.shape == (12, 12) and np.allclose(cov, cov.T) and np.allclose(np.diag(cov), 1)
    item = dataset[(0, 0)]
    assert item["image0"].shape == (3, 80, 80) and item["image0"].dtype == torch.uint8
    v0, v1 = item["views"].tolist()
    pair = dataset.posed[0][1].pair
    assert (names[v0], names[v1]) == (pair.name0, pair.name1)
    assert item["covisible"][0, v0] and item["covisible"][0].tolist() == \
        (cov[v0] >= conf.data.posed_neg_max_overlap).tolist()


# -------------------------------------------------------------------------- training task


def test_training_lowers_the_loss_and_exports(trained, train_dir, tmp_path):
    conf = load_config(SMOKE, _overrides(train_dir, tmp_path))
    dataset = task.build_datasets(conf)["train"]
    batch = default_collate([dataset[(999, i)] for i in range(len(dataset))])  # held out
    before = task.build_model(conf)
    with torch.no_grad():  # the trainer's starting point: clusters from k-means on data
        task._init_clusters(before, task.to_network_input(batch["image0"]), conf)
        loss0, metrics0 = task.compute_loss(before, batch, conf)
    after = load_retrieval_net(trained / f"ckpt_{STEPS:08d}.pt")  # a checkpoint also loads
    with torch.no_grad():
        loss1, metrics1 = task.compute_loss(after, batch, conf)
    assert loss1.item() < 0.7 * loss0.item() and metrics1["accuracy"] > metrics0["accuracy"]
    header = (trained / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("loss", "loss_nce", "accuracy", "sim_pos", "sim_neg_max", "num_neg"):
        assert key in header
    assert "recall@1" in (trained / "val.csv").read_text()
    meta = json.loads((trained / "retrieval.json").read_text())
    assert meta["step"] == STEPS and meta["net_conf"]["num_clusters"] == 8
    exported = trained / "retrieval.pt"
    assert exported.stat().st_size < 10e6
    blob = torch.load(exported, map_location="cpu", weights_only=False)
    assert blob["state_dict"]["projection.weight"].dtype == torch.float16


def _recall_at_1(model, database, queries) -> float:
    db = np.stack(model.describe_batch(database))
    q = np.stack(model.describe_batch(queries))
    return float(np.mean((q @ db.T).argmax(1) == np.arange(len(database))))


def test_trained_head_retrieves_warped_copies(trained, train_dir, tmp_path):
    """Unseen images: a warped copy under another lighting must find its source, and the
    trained head (augmented with such lighting changes) must do clearly better than the
    trainer's starting point (k-means clusters, random projection)."""
    conf = load_config(SMOKE, _overrides(train_dir, tmp_path))
    dataset = task.build_datasets(conf)["train"]
    start = task.build_model(conf)
    with torch.no_grad():
        first = default_collate([dataset[(0, i)] for i in range(8)])
        task._init_clusters(start, task.to_network_input(first["image0"]), conf)
    untrained = save_retrieval_net(start, tmp_path / "untrained.pt")
    database = _images(5, 48)
    rng = np.random.default_rng(6)
    queries = [_query(image, rng) for image in database]
    options = {"precision": "float32", "resize_max": 96}  # about the training views' scale
    r_trained = _recall_at_1(build("global", "netvlad", weights=str(trained / "retrieval.pt"),
                                   **options), database, queries)
    r_untrained = _recall_at_1(build("global", "netvlad", weights=str(untrained), **options),
                               database, queries)
    assert r_trained >= 0.65 and r_trained >= r_untrained + 0.1, (r_trained, r_untrained)


# -------------------------------------------------------------------------- commands


def test_retrieve_and_localize_xy_cli_with_learned_descriptor(trained, tmp_path):
    """`--global netvlad` works through the registry in `retrieve` and `localize-xy`."""
    db_dir, q_dir = tmp_path / "db", tmp_path / "q"
    database = _images(7, 8)
    rng = np.random.default_rng(8)
    rows = ["id,x,y"]
    for i, image in enumerate(database):
        write_image(db_dir / f"d{i}.png", image)
        rows.append(f"d{i},{i},{2 * i}")
    for i in (1, 5):
        write_image(q_dir / f"q{i}.png", _query(database[i], rng))
    (tmp_path / "db.csv").write_text("\n".join(rows) + "\n")
    weights = f"weights={trained / 'retrieval.pt'}"
    out = tmp_path / "pairs.txt"
    args = ["--quiet", "retrieve", "--db", str(db_dir), "--queries", str(q_dir), "--output",
            str(out), "--num-matched", "3", "--global", "netvlad", "--global-conf", weights,
            "resize_max=96", "--work", str(tmp_path / "cache")]
    assert main(args) == 0
    pairs = [line.split() for line in out.read_text().splitlines()]
    assert len(pairs) == 6 and {q for q, _ in pairs} == {"q1.png", "q5.png"}
    assert main(args) == 0  # cached: the second run reuses the stored descriptors
    pred = tmp_path / "xy" / "pred.csv"
    assert main(["--quiet", "localize-xy", "--db", str(db_dir), "--db-csv",
                 str(tmp_path / "db.csv"), "--queries", str(q_dir), "--output", str(pred),
                 "--num-matched", "3", "--global", "netvlad", "--global-conf", weights,
                 "resize_max=96", "--estimator", "best"]) == 0
    predicted = {row.split(",")[0]: [float(v) for v in row.split(",")[1:]]
                 for row in pred.read_text().splitlines()[1:]}
    assert predicted == {"q1": [1.0, 2.0], "q5": [5.0, 10.0]}  # each query's source
