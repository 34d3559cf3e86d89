"""``python -m services.feed``: run the feed service."""

from services.feed.service import FeedService

if __name__ == "__main__":
    FeedService.cli()
