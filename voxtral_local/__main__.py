"""`python -m voxtral_local`: the `voxtral-local` command line; with no command it serves."""

from .cli import main

if __name__ == "__main__":
    main()
