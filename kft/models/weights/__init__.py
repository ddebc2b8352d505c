"""Where pretrained weights come from: registry packages, torch checkpoints, keras-hub presets."""
