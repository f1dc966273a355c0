"""What cgi2real stores and reads back: model packages, label tables, checkpoints, class-folder datasets, report plots."""
