"""``python -m dvtp``: the ``dvtp`` command line (`dvtp.cli`)."""
from .cli import main

if __name__ == "__main__":
    main(prog_name="dvtp")
