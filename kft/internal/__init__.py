"""kft's own plumbing, not public API: TensorFlow start-up, registry assets, argument checks."""
