"""``python -m services.selector``."""

from services.selector.service import Selector

if __name__ == "__main__":
    Selector.cli()
