"""The bottom layer: errors, class names, architectures and run configurations. No torch, no Ray, nothing of ours below."""
