"""`python -m internvlu` runs the command line."""

from internvlu.cli.app import main

if __name__ == "__main__":
    main()
