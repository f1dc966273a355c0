"""`python -m cgi2real ...`: the same as the `cgi2real` command."""

from cgi2real.cli import main

if __name__ == "__main__":
    main()
