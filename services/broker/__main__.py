"""``python -m services.broker``: run the broker process."""

from services.broker.service import BrokerService

if __name__ == "__main__":
    BrokerService.cli()
