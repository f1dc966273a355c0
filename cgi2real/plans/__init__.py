"""What each stage will do, checked before it starts: every option, input and output, without
torch or Ray (the CLI answers bad input in well under two seconds, and `--dry-run` prints a plan)."""
