"""`python -m lean ...` runs the same CLI as the installed `lean` command."""

from lean.cli import main

if __name__ == "__main__":
    main()
