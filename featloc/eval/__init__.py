"""Benchmarks with the field's standard protocols: HPatches MMA and homography estimation
(`featloc.eval.hpatches.run_homography_benchmark`)."""
