"""Synthetic data: procedural images and HPatches-format benchmarks built from any images
(`featloc.synth.hpatches.make_hpatches`)."""
