"""Reading and writing images, pair lists and HDF5 feature/match files."""
