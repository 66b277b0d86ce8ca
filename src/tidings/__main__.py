"""``python -m tidings``: the same as the ``tidings`` console script."""

from tidings.cli.main import main

if __name__ == "__main__":
    main()
