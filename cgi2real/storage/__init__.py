"""Where files are: local folders and S3 behind one `Location`, listings and manifests, reads and writes with retries. No torch."""
