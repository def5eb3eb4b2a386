"""Training data: decoded-image cache, homography sampler, photometric augmentation, teacher
targets, the homographic pair dataset and the resumable epoch sampler."""
