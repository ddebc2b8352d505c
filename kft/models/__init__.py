"""Task models built from pretrained backbones, and where their weights come from."""
