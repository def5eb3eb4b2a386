"""Backends of the robust estimators; each exposes homography, fundamental, relative_pose."""
