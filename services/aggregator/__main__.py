from services.aggregator.service import Aggregator

Aggregator.cli()
