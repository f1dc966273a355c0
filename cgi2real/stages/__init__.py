"""One module per command, each with `run(cfg)`: train, adapt, evaluate, label, review, synth. A stage never imports another."""
