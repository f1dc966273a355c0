"""Pictures into model input: safe decoding, EXIF, geometry and the training recipe on the CPU (`presets`), and their counterparts on the model's device (`gpu_eval`, `gpu_train`)."""
