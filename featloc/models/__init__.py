"""PyTorch networks of the project's learned models (no pretrained weights are downloaded).

- `samfeat`: SAMFeat networks (the published VGG architecture and a CPU-oriented `lite`
  variant with the same outputs), plus the pure functions shared by training and inference:
  descriptor sampling, keypoint detection (NMS, border removal, top-k, sub-pixel refinement).
- `dense`: the detector-free matchers SAM-Net and CoAM (shared backbone, coarse dual-softmax
  / distinctiveness matching, fine window refinement), `featloc.matching.dense` wraps them.
- `export`: ONNX export of a network (dynamic image size), used by the `onnx` backend of the
  extractors and by `featloc export-onnx`.

Models are inference-complete and imported by `featloc.train`; extractors in
`featloc.features` wrap them into the `Extractor` interface.
"""
