"""Training and calibrating memories: `train(cfg)` and its loop, tokenised batches, checkpoints, the
model's own solutions as targets, the teacher-forced scoring path, thresholds and calibration.
Imports the layers below it (models/, data/, memory/, decoding/)."""
